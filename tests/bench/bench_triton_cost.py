"""What Triton costs per call, per model: the same small call in process and through a real Triton server.

speech_tokenizer: one 1 s clip; llm: a one-token generation; speech_decoder: one 10-code block (a whole
reply). Medians of alternating calls, both paths in this run on this machine (tiny presets, CPU), one torch
thread each.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glmvoice.models.llm_checkpoint import load_llm  # noqa: E402
from glmvoice.models.speech_decoder import load_speech_decoder  # noqa: E402
from glmvoice.runtime.decoder_service import DecodeItem, DecoderService  # noqa: E402
from glmvoice.runtime.decoder_stream import DecoderStreams  # noqa: E402
from glmvoice.runtime.llm_engine import EngineConfig, GenerationRequest, LLMEngine  # noqa: E402
from glmvoice.runtime.tokenizer_service import TokenizeItem, TokenizerService  # noqa: E402
from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer  # noqa: E402
from glmvoice.sampling import SamplingParams  # noqa: E402
from services.triton.launcher import TritonServer, TritonSettings  # noqa: E402
from services.triton.repository import build_repository  # noqa: E402
from tests.fixtures.servers import free_port  # noqa: E402
from tests.fixtures.speech_decoder import build_tiny_speech_decoder_dir  # noqa: E402
from tests.fixtures.speech_tokenizer import build_tiny_speech_tokenizer_dir  # noqa: E402
from tests.integration.test_triton_llm import Stream  # noqa: E402
from tests.integration.test_triton_speech_decoder import ReplyStream  # noqa: E402
from tests.integration.test_triton_speech_tokenizer import infer as tokenizer_infer  # noqa: E402
from training.random_checkpoints import write_tiny_checkpoint  # noqa: E402

REPEATS = 30
GREEDY = SamplingParams(temperature=0.0)


def paired_medians_ms(first, second) -> tuple[float, float]:
    """Alternates the two calls, so load from other processes falls on both alike."""
    first(), second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(REPEATS):
        for call, record in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            call()
            record.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    torch.set_num_threads(1)  # as each Triton instance runs (cpu_threads in config.pbtxt)
    work = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    dirs = {
        "speech_tokenizer": build_tiny_speech_tokenizer_dir(work / "tokenizer"),
        "llm": write_tiny_checkpoint(work / "llm", seed=0),
        "speech_decoder": build_tiny_speech_decoder_dir(work / "decoder"),
    }
    clip = (np.sin(np.arange(16000) / 9) * 0.3).astype(np.float32)
    codes = list(range(10))
    prompt = list(range(1, 17))

    tokenizer = TokenizerService(load_speech_tokenizer(dirs["speech_tokenizer"]))
    decoder = DecoderService(DecoderStreams(load_speech_decoder(dirs["speech_decoder"])))
    engine = LLMEngine(load_llm(dirs["llm"])[0], EngineConfig(max_slots=4, max_seq_len=128)).start()

    def llm_in_process():
        done = threading.Event()
        engine.submit(GenerationRequest(prompt, GREEDY, 1), lambda t: None, lambda r, e: done.set())
        done.wait()

    repo = build_repository(work / "repo", dirs, device="cpu")
    settings = TritonSettings(model_repository=repo, models=tuple(dirs), grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(settings, log_path=work / "triton.log").start() as server:
        url = server.grpc_url
        llm_stream, reply = Stream(url), ReplyStream(url, 1)
        client = grpcclient.InferenceServerClient(url)

        def llm_triton():
            llm_stream.final.clear()
            llm_stream.send(prompt, 1)
            llm_stream.final.wait()

        results = {
            "speech_tokenizer": paired_medians_ms(
                lambda: tokenizer.run([TokenizeItem("1", clip, 16000, True, True)]),
                lambda: tokenizer_infer(url, clip, 1, client=client),
            ),
            "llm": paired_medians_ms(llm_in_process, llm_triton),
            "speech_decoder": paired_medians_ms(
                lambda: decoder.run([DecodeItem("1", codes, True, True)]),
                lambda: reply.send(codes, start=True, end=True),
            ),
        }
        llm_stream.close()
        reply.close()
    engine.stop()

    print(f"Triton cost per call (tiny presets, CPU, median of {REPEATS})")
    print(f"{'model':>17} {'in-process ms':>14} {'Triton ms':>10} {'cost ms':>8} {'ratio':>6}")
    for model in dirs:
        a, b = results[model]
        print(f"{model:>17} {a:>14.2f} {b:>10.2f} {b - a:>8.2f} {b / a:>6.2f}")


if __name__ == "__main__":
    main()
