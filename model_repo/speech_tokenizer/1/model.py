"""Triton adapter for the speech tokenizer: Triton tensors in and out of glmvoice.runtime.tokenizer_service."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from glmvoice.runtime.serving import (
    RequestInputs,
    apply_cpu_threads,
    model_parameters,
    read_version,
    triton_device,
    triton_error,
    version_dir_from_args,
)
from glmvoice.runtime.tokenizer_service import TokenizeItem, TokenizerService
from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        params = model_parameters(model_config)
        spec = read_version(version_dir_from_args(args))
        device = triton_device(spec["device"], args["model_instance_kind"], args["model_instance_device_id"])
        apply_cpu_threads(device, int(params.get("cpu_threads", "0")))
        idle_us = model_config["sequence_batching"].get("max_sequence_idle_microseconds", 60_000_000)
        self.service = TokenizerService(load_speech_tokenizer(spec["path"], device), idle_timeout_s=int(idle_us) / 1e6)
        # Streams holding state here (a barge-in must bring it to 0 at once); the family outlives its metric.
        self.metric_family = pb_utils.MetricFamily(
            name="glmvoice_speech_tokenizer_open_streams", description="Open speech tokenizer streams",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self.open_streams = self.metric_family.Metric(labels={})
        self.default_rate = self.service.tokenizer.config.sampling_rate

    def execute(self, requests):
        items = []
        for request in requests:
            inputs = RequestInputs(pb_utils, request)
            items.append(
                TokenizeItem(
                    stream_id=str(inputs.scalar("CORRID")),
                    audio=inputs.array("AUDIO").astype(np.float32),
                    sample_rate=inputs.scalar("SAMPLE_RATE", self.default_rate),
                    start=bool(inputs.scalar("START")),
                    end=bool(inputs.scalar("END")),
                    cancel=bool(inputs.scalar("CANCEL", False)),
                )
            )
        responses = []
        for result in self.service.run(items):
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(error=triton_error(pb_utils, result)))
            else:
                codes = np.asarray(result, dtype=np.int64)[None]  # [1, N]: the batch dimension
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("CODES", codes)]))
        self.open_streams.set(self.service.open_streams)
        return responses
