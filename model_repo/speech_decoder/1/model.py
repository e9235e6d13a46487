"""Triton adapter for the speech decoder: Triton tensors in and out of glmvoice.runtime.decoder_service."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from glmvoice.models.speech_decoder import load_speech_decoder
from glmvoice.runtime.decoder_service import DecodeItem, DecoderService
from glmvoice.runtime.decoder_stream import DecoderStreams
from glmvoice.runtime.serving import (
    RequestInputs,
    apply_cpu_threads,
    model_parameters,
    read_version,
    triton_device,
    triton_error,
    version_dir_from_args,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        spec = read_version(version_dir_from_args(args))
        device = triton_device(spec["device"], args["model_instance_kind"], args["model_instance_device_id"])
        apply_cpu_threads(device, int(model_parameters(model_config).get("cpu_threads", "0")))
        idle_us = int(model_config["sequence_batching"].get("max_sequence_idle_microseconds", 60_000_000))
        streams = DecoderStreams(load_speech_decoder(spec["path"], device))
        self.service = DecoderService(streams, idle_timeout_s=idle_us / 1e6)
        # Streams holding state here (a barge-in must bring it to 0 at once); the family outlives its metric.
        self.metric_family = pb_utils.MetricFamily(
            name="glmvoice_speech_decoder_open_streams", description="Open speech decoder streams",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self.open_streams = self.metric_family.Metric(labels={})

    @staticmethod
    def _item(request):
        inputs = RequestInputs(pb_utils, request)
        release = inputs.scalar("CANCEL_CORRID")
        return DecodeItem(
            stream_id=str(inputs.scalar("CORRID") if release is None else release),
            codes=inputs.array("CODES").tolist(),
            start=bool(inputs.scalar("START")),
            end=bool(inputs.scalar("END")),
            seed=int(inputs.scalar("SEED", 0)),
            output_rate=inputs.scalar("OUTPUT_RATE"),
            # A request whose client cancelled its stream (barge-in) cancels the reply: blocks that queued
            # behind it in the sequence batcher are dropped undecoded, before the explicit CANCEL arrives.
            cancel=bool(inputs.scalar("CANCEL", False)) or release is not None or request.is_cancelled(),
        )

    def execute(self, requests):
        try:
            items = [self._item(request) for request in requests]
            for request, item, result in zip(requests, items, self.service.run(items)):
                sender = request.get_response_sender()
                if isinstance(result, Exception):
                    sender.send(pb_utils.InferenceResponse(error=triton_error(pb_utils, result)), flags=FINAL)
                    continue
                rate = np.array([[item.output_rate or self.service.sample_rate]], np.int32)
                for chunk in result:
                    audio = pb_utils.Tensor("AUDIO", chunk.astype(np.float32)[None])
                    sender.send(pb_utils.InferenceResponse([audio, pb_utils.Tensor("SAMPLE_RATE", rate)]))
                sender.send(flags=FINAL)
        finally:  # the gauge is what the barge-in check reads; it must not go stale when a batch fails
            self.open_streams.set(self.service.open_streams)
        return None
