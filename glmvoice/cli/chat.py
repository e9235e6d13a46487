"""`glmvoice chat AUDIO`: one spoken turn against a running stack, over gRPC VoiceChat.Converse (the
orchestrator) or, with `--ws`, over the gateway's `/v1/realtime` (the OpenAI Realtime protocol).

Streams the WAV as 20 ms frames in the chosen encoding and rate (`--paced`: at the speed of speech), then
ends the turn (client turn detection; `--server-vad` lets the server's VAD end it after trailing silence),
writes the reply as a WAV and prints the reply text, session id and latency breakdown as JSON.
Without `--addr` / a `--ws` URL, the addresses come from what `make up` wrote (glmvoice.client.stack_file: the checkout's build/stack/stack.json).
"""

from __future__ import annotations

import argparse
import json

ENCODINGS = ("linear16", "mulaw", "alaw")
DEFAULT_ADDR = "127.0.0.1:50051"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", help="a WAV file with the user's spoken turn")
    parser.add_argument("--addr", default=None, help=f"orchestrator host:port (default: `make up`'s, else {DEFAULT_ADDR})")
    parser.add_argument("--ws", nargs="?", const="", default=None, metavar="URL",
                        help="talk to the gateway's /v1/realtime instead (default URL: `make up`'s gateway)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="linear16", help="wire encoding of the user audio")
    parser.add_argument("--rate", type=int, default=None, help="wire sample rate of the user audio "
                        "(default 16000; with --ws 24000, and 8000 for G.711)")
    parser.add_argument("--out-encoding", choices=ENCODINGS, default="linear16")
    parser.add_argument("--out-rate", type=int, default=None, help="reply sample rate (default 22050; with --ws as --rate)")
    parser.add_argument("--out", default="reply.wav", help="where the reply audio goes")
    parser.add_argument("--paced", action="store_true", help="send frames at the pace of speech (20 ms per 20 ms frame)")
    parser.add_argument("--server-vad", action="store_true", help="let the server's VAD end the turn")
    parser.add_argument("--session-id", default="", help="continue this session")
    parser.add_argument("--style", default="", help="style instruction, e.g. 'speak slowly and cheerfully'")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--api-key", default=None, help="sent as 'authorization: Bearer <key>'")
    parser.add_argument("--timeout", type=float, default=300.0)


def _default_rate(encoding: str, ws: bool, grpc_default: int) -> int:
    if not ws:
        return grpc_default
    return 24000 if encoding == "LINEAR16" else 8000  # the protocol's rates


def run(args: argparse.Namespace) -> int:
    from glmvoice.audio import write_wav
    from glmvoice.client import stack_addresses

    stack = stack_addresses()
    encoding, out_encoding = args.encoding.upper(), args.out_encoding.upper()
    ws = args.ws is not None
    out_rate = args.out_rate or _default_rate(out_encoding, ws, 22050)
    options = dict(encoding=encoding, rate=args.rate or _default_rate(encoding, ws, 16000), out_encoding=out_encoding,
                   out_rate=out_rate, paced=args.paced, server_vad=args.server_vad, api_key=args.api_key,
                   timeout=args.timeout, session_id=args.session_id, style=args.style, temperature=args.temperature,
                   max_new_tokens=args.max_new_tokens, seed=args.seed)
    if ws:
        from glmvoice import realtime_client

        url = args.ws or (stack["gateway"].replace("http", "ws", 1) + "/v1/realtime" if "gateway" in stack else "")
        if not url:
            raise ValueError("--ws needs a URL (ws://HOST:PORT/v1/realtime) when no `make up` stack is running")
        try:
            events = realtime_client.realtime_turn(url, args.audio, **options)
        except OSError as exc:
            raise ValueError(f"{url}: {exc}") from None
        audio = events.waveform(out_encoding)
        write_wav(args.out, audio, out_rate)
        print(json.dumps({**realtime_client.summary(events, len(audio) / out_rate), "reply_wav": args.out}, indent=2))
        return 0

    import grpc

    from glmvoice.client import converse_wav, summary

    addr = args.addr or stack.get("orchestrator", DEFAULT_ADDR)
    try:
        transcript, reply = converse_wav(addr, args.audio, **options)
    except grpc.RpcError as exc:  # the CLI reports ValueErrors as a one-line error with exit code 2
        raise ValueError(f"{addr}: {exc.code().name}: {exc.details()}") from None
    write_wav(args.out, reply, out_rate)
    print(json.dumps({**summary(transcript, len(reply) / out_rate), "reply_wav": args.out}, indent=2))
    return 0
