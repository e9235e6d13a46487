"""`python -m services.demo --checkpoints DIR`: a spoken question through the whole system, end to end.

Starts Redis, Triton (the three models in one process) and the orchestrator on free local ports with the
checkpoints in DIR (the tiny ones are trained first if DIR lacks any), streams a recording
(--clip; by default a LibriVox clip) in real time as 20 ms frames (16 kHz linear PCM, or --telephony: mu-law
8 kHz), writes the reply WAV and the transcript to build/demo/, prints the latency breakdown, and stops
everything. `make demo` asks the committed demo checkpoints an arithmetic question in a voice they never heard
and then has training.demo_eval say what an ASR hears in the reply (services do not import training).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

CLIP = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav")
STAGES = (
    ("tokenize", "end of speech -> last speech token"),
    ("prefill", "LM prefill of what was left"),
    ("decode_to_first_speech", "first LM id -> first speech token"),
    ("speech_decode", "first decoder block"),
    ("first_audio", "end of speech -> first audio byte"),
)


def librivox_transcript(clip: Path) -> str:
    for line in (clip.parent / "transcription").read_text().splitlines():
        words, file_id = line.rsplit("(", 1)
        if file_id.rstrip(")").strip() == clip.stem:
            return words.replace("<s>", "").replace("</s>", "").strip()
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, required=True, help="dir with glm-4-voice-{tokenizer,9b,decoder}/")
    parser.add_argument("--out", type=Path, default=Path("build/demo"))
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--question", help="what --clip says (default: its LibriVox transcript)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy, as training.demo_eval measures")
    parser.add_argument("--telephony", action="store_true", help="send 8 kHz mu-law instead of 16 kHz linear PCM")
    parser.add_argument("--no-realtime", action="store_true", help="send the audio as fast as possible")
    args = parser.parse_args(argv)
    if not args.clip.exists():
        print(f"demo: {args.clip} is missing: run `make setup` (Debian package pocketsphinx-testdata)", file=sys.stderr)
        return 2

    from glmvoice.audio import write_wav
    from glmvoice.client import converse_wav, summary
    from services.local_stack import RedisServer, build_model_repository, ensure_checkpoints, start_triton
    from services.orchestrator.server import OrchestratorThread
    from services.orchestrator.settings import Settings

    args.out.mkdir(parents=True, exist_ok=True)
    built = ensure_checkpoints(args.checkpoints)
    if built:
        print(f"demo: {args.checkpoints} lacked {', '.join(built)}: trained the tiny checkpoints")
    started = time.monotonic()
    redis = RedisServer(args.out / "redis").start()
    triton = orchestrator = None
    try:
        repository = build_model_repository(args.checkpoints, args.out / "model_repository")
        triton = start_triton(repository, args.out / "tritonserver.log")
        settings = Settings(
            redis_addr=redis.addr, triton_speech_tokenizer_addr=triton.grpc_url, triton_llm_addr=triton.grpc_url,
            triton_speech_decoder_addr=triton.grpc_url, checkpoints=args.checkpoints.resolve(), grpc_port=0,
            bind_address="127.0.0.1",
        )
        orchestrator = OrchestratorThread.start(replace(settings))
        print(f"demo: Redis, Triton (3 models) and the orchestrator up in {time.monotonic() - started:.1f} s")
        encoding, rate = ("MULAW", 8000) if args.telephony else ("LINEAR16", 16000)
        print(f"demo: streaming {args.clip.name} as 20 ms {encoding} {rate // 1000} kHz frames"
              f"{'' if args.no_realtime else ' in real time'}")
        transcript, reply = converse_wav(
            orchestrator.address, args.clip, encoding=encoding, rate=rate, out_encoding="LINEAR16", out_rate=22050,
            paced=not args.no_realtime, server_vad=True, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
        )
    finally:
        for server in (orchestrator, triton, redis):
            if server is not None:
                server.stop()
    write_wav(args.out / "reply.wav", reply, 22050)
    result = {
        **summary(transcript, len(reply) / 22050),
        "question_transcript": args.question or librivox_transcript(args.clip),
        "question_wav": str(args.clip),
        "reply_wav": str(args.out / "reply.wav"),
        "trained_missing_checkpoints": built,
    }
    (args.out / "transcript.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"demo: question: {result['question_transcript']!r}")
    print(f"demo: reply ({result['audio_seconds']} s of audio, {result['reason']}): {result['text']!r}")
    if result["reason"] == "TURN_END_REASON_LENGTH":
        print(f"demo: the reply was cut by the token budget (--max-new-tokens {args.max_new_tokens}), not ended by the model")
    print("demo: latency breakdown")
    for stage, meaning in STAGES:
        print(f"  {stage:<24} {result['latency_ms'][stage]:>9.1f} ms   {meaning}")
    print(f"  {'real-time factor':<24} {result['real_time_factor']:>9.2f} x    reply audio seconds per second")
    print(f"demo: wrote {args.out / 'reply.wav'} and {args.out / 'transcript.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
