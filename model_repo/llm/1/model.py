"""Triton adapter for the LM: protobuf-free glue between Triton requests and glmvoice.runtime.llm_engine.

Tensors (names and dtypes from glmvoice.runtime.llm_contract, declared in config.pbtxt):
- input_ids INT64 [n]: the prompt (required).
- max_new_tokens INT32 [1]: default 2000; 0 only prefills and keeps the KV under prefix_key.
- temperature FP32, top_p FP32, top_k INT32, repetition_penalty FP32, presence_penalty FP32, seed UINT64,
  each [1]: sampling (absent: the official temperature 0.2, top_p 0.8).
- stop_ids INT64 [n]: ids that end the reply (default: the checkpoint's chat stop ids).
- prefix_key STRING [1]: the session id whose KV is kept for its next turn.
- stream_chunk_tokens INT32 [1]: fewest ids per response but the last.
- output_ids INT64 [n] (every response): ids generated since the last response.
- finish_reason STRING [1] (the FINAL response): stop | length | prefilled.
Errors: per request, the gRPC status in front of the message (llm_contract.tag_error).
"""

import json
import os
import queue
import signal
import threading
import time
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils

from glmvoice.runtime import llm_contract as contract
from glmvoice.runtime.llm_engine import GenerationRequest, LLMEngine
from glmvoice.runtime.serving import (
    RequestInputs,
    apply_cpu_threads,
    engine_config,
    load_engine_model,
    model_parameters,
    read_version,
    triton_device,
    triton_error,
    version_dir_from_args,
)
from glmvoice.sampling import OFFICIAL_SAMPLING, SamplingParams

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        # The stub ignores SIGTERM (Triton stops it through unload), so one whose server died without unloading
        # it (its exit timeout passed while a reply was in flight, a crash) lived on under init, its threads
        # blocked on calls to the dead server, and ignoring SIGTERM: it obeys SIGTERM again. (Tried and dropped:
        # a watcher thread polling getppid() never ran once the server was gone, likely starved of the GIL by a
        # thread blocked on the server; PR_SET_PDEATHSIG fires when Triton's loading thread ends.)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        config = json.loads(args["model_config"])
        contract.check_model_config(config)
        spec = read_version(version_dir_from_args(args))
        device = triton_device(spec["device"], args["model_instance_kind"], args["model_instance_device_id"])
        params = model_parameters(config)
        apply_cpu_threads(device, int(params.get("cpu_threads", "0")))
        self.default_chunk = int(params.get("stream_chunk_tokens", "1"))
        self.cancel_poll_s = int(params.get(contract.CANCEL_POLL_MS, "50")) / 1000
        # The model here, or a runner over tensor-parallel rank processes (`tensor_parallel` parameter).
        self.model, self.tokenizer = load_engine_model(spec["path"], device, params, dict(os.environ))
        self.default_stop_ids = frozenset(self.tokenizer.stop_ids)
        self.engine = LLMEngine(self.model, engine_config(params)).start()
        self.senders = {}  # request id -> (request, sender) while streaming, for cancellation polling
        self.lock = threading.Lock()
        self._metrics()
        self.running = True
        self.watcher = threading.Thread(target=self._watch_cancellations, daemon=True)
        self.watcher.start()
        # Responses leave from their own thread: a send is a round trip to the server process, and the
        # engine's next step should not wait for it. One thread keeps each request's responses in order.
        self.outbox = queue.SimpleQueue()
        self.postman = threading.Thread(target=self._send_responses, daemon=True)
        self.postman.start()

    def _metrics(self):
        # The family must outlive its metrics, so it is kept on the instance.
        self.metric_family = family = pb_utils.MetricFamily(
            name="glmvoice_llm_engine", description="LM engine state (active, queued, free_slots)",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self.gauges = {key: family.Metric(labels={"state": key}) for key in ("active", "queued", "free_slots")}
        # Token counters: prefill against reused prefix is what session affinity across replicas buys.
        self.counter_family = counters = pb_utils.MetricFamily(
            name="glmvoice_llm_tokens_total", description="LM tokens by kind (prefill, prefix_reused, generated)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.counters = {key: counters.Metric(labels={"kind": key.removesuffix("_tokens")})
                         for key in ("prefill_tokens", "prefix_reused_tokens", "generated_tokens")}
        self.counted = dict.fromkeys(self.counters, 0)

    def _update_metrics(self):
        stats = self.engine.stats()
        for key, gauge in self.gauges.items():
            gauge.set(stats[key])
        for key, counter in self.counters.items():  # Triton counters only increase: add what is new
            counter.increment(stats[key] - self.counted[key])
            self.counted[key] = stats[key]

    def execute(self, requests):
        for request in requests:
            self._start(request)
        return None

    def _start(self, request):
        sender = request.get_response_sender()
        try:
            generation = self._generation_request(request)
        except (ValueError, TypeError) as exc:
            sender.send(pb_utils.InferenceResponse(error=triton_error(pb_utils, ValueError(str(exc)))), flags=FINAL)
            return

        # Ids go out in responses of `chunk` ids: one response per id costs a message per stream per step,
        # which dominates small models; the final response carries what is left. The engine thread only
        # queues plain ids: building and sending Triton responses is the postman thread's work.
        chunk = RequestInputs(pb_utils, request).scalar(contract.STREAM_CHUNK_TOKENS) or self.default_chunk
        pending = []

        def on_token(token):
            pending.append(token)
            if len(pending) >= chunk:
                self.outbox.put((sender, pending[:], None, None))
                pending.clear()

        def on_finish(reason, error):
            with self.lock:
                self.senders.pop(generation.request_id, None)
            self.outbox.put((sender, pending[:], reason, error))

        # Our own id: Triton's request ids are optional and need not be unique. The engine calls on_finish
        # with its lock held, so self.lock is never held while calling into the engine.
        generation.request_id = uuid.uuid4().hex
        with self.lock:
            self.senders[generation.request_id] = request
        try:
            self.engine.submit(generation, on_token, on_finish)
        except (ValueError, contract.EngineFullError) as exc:
            with self.lock:
                self.senders.pop(generation.request_id, None)
            sender.send(pb_utils.InferenceResponse(error=triton_error(pb_utils, exc)), flags=FINAL)

    def _generation_request(self, request):
        inputs = RequestInputs(pb_utils, request)
        ids = inputs.array(contract.INPUT_IDS)
        sampling = {name: inputs.scalar(name) for name in contract.SAMPLING_INPUTS}
        stop = inputs.array(contract.STOP_IDS)
        key = inputs.scalar(contract.PREFIX_KEY)
        max_new = inputs.scalar(contract.MAX_NEW_TOKENS)
        return GenerationRequest(
            prompt_ids=[int(i) for i in ids],
            sampling=SamplingParams(**{**OFFICIAL_SAMPLING, **{k: v for k, v in sampling.items() if v is not None}}),
            max_new_tokens=contract.DEFAULT_MAX_NEW_TOKENS if max_new is None else int(max_new),
            stop_ids=frozenset(int(i) for i in stop) if stop is not None else self.default_stop_ids,
            prefix_key=key.decode() if isinstance(key, bytes) else key,
        )

    def _watch_cancellations(self):
        # Triton marks a request cancelled when the client goes away or cancels the stream; free its KV now.
        # The same loop keeps the engine gauges current for Triton's metrics endpoint.
        while self.running:
            try:
                self._update_metrics()
                with self.lock:
                    cancelled = [rid for rid, request in self.senders.items() if request.is_cancelled()]
                for rid in cancelled:
                    self.engine.cancel(rid)
            except Exception as exc:  # this thread must outlive any one bad request
                pb_utils.Logger.log_error(f"llm cancellation watcher: {exc!r}")
            time.sleep(self.cancel_poll_s)

    def _send_responses(self):
        """Sends queued (sender, ids, finish reason, error) items, each request's in order; a reason or an
        error is FINAL. Items that queued up while the last sends went out leave together, one response per
        request: under load a send carries several steps' ids instead of falling further behind."""
        while True:
            waiting = [self.outbox.get()]
            while not self.outbox.empty():
                waiting.append(self.outbox.get())
            for sender, ids, reason, error in self._merge_per_request(waiting):
                self._send(sender, ids, reason, error)
            if waiting[-1] is None:
                return

    @staticmethod
    def _merge_per_request(items):
        merged = {}  # id(sender) -> [sender, ids, reason, error], in order of first appearance
        for item in items:
            if item is None:
                continue
            sender, ids, reason, error = item
            entry = merged.setdefault(id(sender), [sender, [], None, None])
            entry[1] += ids
            entry[2], entry[3] = reason, error
        return merged.values()

    def _send(self, sender, ids, reason, error):
        try:
            if error is not None:
                sender.send(pb_utils.InferenceResponse(error=triton_error(pb_utils, error)), flags=FINAL)
            elif reason == "cancelled":
                sender.send(flags=FINAL)
            else:
                tensors = [pb_utils.Tensor(contract.OUTPUT_IDS, np.array(ids, np.int64))]
                if reason is not None:
                    tensors.append(pb_utils.Tensor(contract.FINISH_REASON, np.array([reason.encode()], np.object_)))
                sender.send(pb_utils.InferenceResponse(tensors), flags=FINAL if reason is not None else 0)
        except Exception as exc:  # a client gone mid-stream must not stop the others' responses
            pb_utils.Logger.log_error(f"llm response not sent: {exc!r}")

    def finalize(self):
        self.running = False
        self.watcher.join()
        self.engine.stop()
        self.engine.runner.close()  # stops tensor-parallel rank processes
        self.outbox.put(None)
        self.postman.join()
