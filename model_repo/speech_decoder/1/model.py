"""Triton adapter for the speech decoder: Triton tensors in and out of glmvoice.runtime.decoder_service."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from glmvoice.models.speech_decoder import load_speech_decoder
from glmvoice.runtime.decoder_service import DecodeItem, DecoderService
from glmvoice.runtime.decoder_stream import DecoderStreams
from glmvoice.runtime.serving import (
    apply_cpu_threads, model_parameters, read_version, triton_device, triton_error, version_dir_from_args,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _scalar(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        spec = read_version(version_dir_from_args(args))
        device = triton_device(spec["device"], args["model_instance_kind"], args["model_instance_device_id"])
        apply_cpu_threads(device, int(model_parameters(model_config).get("cpu_threads", "0")))
        idle_us = int(model_config["sequence_batching"].get("max_sequence_idle_microseconds", 60_000_000))
        streams = DecoderStreams(load_speech_decoder(spec["path"], device))
        self.service = DecoderService(streams, idle_timeout_s=idle_us / 1e6)

    def execute(self, requests):
        items = [
            DecodeItem(
                stream_id=str(_scalar(request, "CORRID")),
                codes=pb_utils.get_input_tensor_by_name(request, "CODES").as_numpy().reshape(-1).tolist(),
                start=bool(_scalar(request, "START")),
                end=bool(_scalar(request, "END")),
                seed=int(_scalar(request, "SEED", 0)),
                output_rate=_scalar(request, "OUTPUT_RATE"),
            )
            for request in requests
        ]
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
        return None
