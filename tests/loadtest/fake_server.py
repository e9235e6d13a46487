"""A VoiceChat server whose timing is known: each reply starts `delay_s` after EndOfTurn and sends audio chunks
at given offsets, so the load generator's TTFA, underrun and continuity have expected values."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from glmvoice.v1 import common_pb2
from glmvoice.v1 import voice_chat_pb2 as pb
from glmvoice.v1.voice_chat_pb2_grpc import VoiceChatServicer, add_VoiceChatServicer_to_server

BYTES_PER_SAMPLE = {"LINEAR16": 2, "MULAW": 1, "ALAW": 1}


@dataclass
class Script:
    delay_s: float  # end of turn -> first chunk
    chunks: list[tuple[float, float]]  # (offset from the first chunk, seconds of audio), per turn in order
    refuse: bool = False


class FakeVoiceChat(VoiceChatServicer):
    def __init__(self, scripts: list[Script]):
        self.scripts = scripts  # turn n of every session follows scripts[n % len]

    async def Converse(self, request_iterator, context):
        requests = request_iterator.__aiter__()
        config = (await requests.__anext__()).config
        if self.scripts[0].refuse:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
        encoding = common_pb2.AudioEncoding.Name(config.output_audio.encoding).removeprefix("AUDIO_ENCODING_")
        bytes_per_s = config.output_audio.sample_rate_hz * BYTES_PER_SAMPLE[encoding]
        out: asyncio.Queue = asyncio.Queue()
        yield pb.ConverseResponse(session_started=pb.SessionStarted(session_id="fake"))

        async def reply(script: Script):
            try:
                await asyncio.sleep(script.delay_s)
                start = asyncio.get_running_loop().time()
                for offset, seconds in script.chunks:
                    await asyncio.sleep(max(0.0, start + offset - asyncio.get_running_loop().time()))
                    out.put_nowait(pb.ConverseResponse(audio=pb.AudioOut(data=b"\0" * int(seconds * bytes_per_s))))
                reason = pb.TURN_END_REASON_COMPLETED
            except asyncio.CancelledError:
                reason = pb.TURN_END_REASON_CANCELLED
            latency = pb.TurnLatency(first_audio_ms=script.delay_s * 1000, prefill_ms=12.5)
            out.put_nowait(pb.ConverseResponse(turn_ended=pb.TurnEnded(reason=reason, text="ok", latency=latency)))

        async def read():
            turn, task = 0, None
            async for request in requests:
                kind = request.WhichOneof("event")
                if kind == "audio" and task is not None and not task.done():
                    task.cancel()  # barge-in
                    await asyncio.gather(task, return_exceptions=True)
                elif kind == "end_of_turn":
                    task = asyncio.create_task(reply(self.scripts[turn % len(self.scripts)]))
                    turn += 1
            if task is not None:
                await task
            out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await out.get()) is not None:
                yield item
        finally:
            reader.cancel()


async def start(scripts: list[Script]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    add_VoiceChatServicer_to_server(FakeVoiceChat(scripts), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"
