"""`glmvoice chat AUDIO`: one spoken turn against a running orchestrator (gRPC VoiceChat.Converse).

Streams the WAV as 20 ms frames in the chosen encoding and rate (optionally in real time), then ends the
turn (client turn detection; `--server-vad` lets the server's VAD end it after trailing silence), writes
the reply as a WAV and prints the reply text, session id and latency breakdown as JSON.
"""

from __future__ import annotations

import argparse
import json

ENCODINGS = ("linear16", "mulaw", "alaw")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", help="a WAV file with the user's spoken turn")
    parser.add_argument("--addr", default="127.0.0.1:50051", help="orchestrator host:port")
    parser.add_argument("--encoding", choices=ENCODINGS, default="linear16", help="wire encoding of the user audio")
    parser.add_argument("--rate", type=int, default=16000, help="wire sample rate of the user audio")
    parser.add_argument("--out-encoding", choices=ENCODINGS, default="linear16")
    parser.add_argument("--out-rate", type=int, default=22050)
    parser.add_argument("--out", default="reply.wav", help="where the reply audio goes")
    parser.add_argument("--realtime", action="store_true", help="send frames at the pace of speech")
    parser.add_argument("--server-vad", action="store_true", help="let the server's VAD end the turn")
    parser.add_argument("--session-id", default="", help="continue this session")
    parser.add_argument("--style", default="", help="style instruction, e.g. 'speak slowly and cheerfully'")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--api-key", default=None, help="sent as 'authorization: Bearer <key>'")
    parser.add_argument("--timeout", type=float, default=300.0)


def run(args: argparse.Namespace) -> int:
    import grpc

    from glmvoice.audio import write_wav
    from glmvoice.client import converse_wav, summary

    sampling = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    try:
        transcript, reply = converse_wav(
            args.addr, args.audio, encoding=args.encoding.upper(), rate=args.rate, out_encoding=args.out_encoding.upper(),
            out_rate=args.out_rate, realtime=args.realtime, server_vad=args.server_vad, api_key=args.api_key,
            timeout=args.timeout, session_id=args.session_id, style=args.style, **sampling,
        )
    except grpc.RpcError as exc:  # the CLI reports ValueErrors as a one-line error with exit code 2
        raise ValueError(f"{args.addr}: {exc.code().name}: {exc.details()}") from None
    write_wav(args.out, reply, args.out_rate)
    print(json.dumps({**summary(transcript, len(reply) / args.out_rate), "reply_wav": args.out}, indent=2))
    return 0
