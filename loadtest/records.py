"""One record per turn (a JSON line), and the summary of a run grouped by target and load level."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtest.metrics import percentiles

STAGES = ("tokenize_ms", "prefill_ms", "decode_to_first_speech_ms", "speech_decode_ms")


@dataclass
class TurnRecord:
    target: str  # which server (a name given on the command line: ours, baseline, ...)
    level: float  # the load level this turn ran under (concurrency, or arrival rate for Poisson)
    session: int
    turn: int  # index within the session (0 = first)
    fmt: str = ""  # input format (speech.FORMATS key); replies come back in the same encoding and rate
    utterance: str = ""
    speech_s: float = 0.0  # length of what the caller said
    started_s: float = 0.0  # when the caller started speaking, seconds since the run began
    admitted: bool = True  # False: the session was refused before it started (no turn ran)
    status: str = "OK"  # gRPC status code name of a failed turn or session, else OK
    error: str = ""
    reason: str = ""  # TurnEnded reason: completed, length, cancelled
    barge_in: bool = False  # the caller spoke over this reply
    barge_in_stop_ms: float | None = None  # caller's first frame over the reply -> TurnEnded (cancelled)
    ttfa_ms: float | None = None  # client-measured time to first audio
    server: dict = field(default_factory=dict)  # TurnLatency as the server reported it (ms; real_time_factor)
    reply_audio_s: float = 0.0
    reply_text: str = ""
    chunks: int = 0
    underrun_ms: float | None = None
    max_stall_ms: float | None = None
    stalls: int = 0
    continuous: bool | None = None
    send_lag_ms: float = 0.0  # worst lateness of a frame against its real-time slot (the client's own health)
    client_rtf: float | None = None  # reply audio seconds / seconds from first to last chunk
    speech_tokens: int | None = None  # filled by the quality check (GetSession)
    audio: bytes = field(default=b"", repr=False)  # kept only when asked for (quality check); not written

    @property
    def ok(self) -> bool:
        return self.admitted and self.status == "OK"

    def to_json(self) -> str:
        data = asdict(self)
        del data["audio"]
        return json.dumps(data, ensure_ascii=False)


def write_jsonl(records: list[TurnRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r.to_json() + "\n" for r in records))


def read_jsonl(path: Path) -> list[TurnRecord]:
    return [TurnRecord(**json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]


def summarize_group(records: list[TurnRecord]) -> dict:
    sessions = {r.session for r in records}
    refused = {r.session for r in records if not r.admitted}
    turns = [r for r in records if r.admitted]
    answered = [r for r in turns if r.ok and r.ttfa_ms is not None]
    played = [r for r in answered if r.underrun_ms is not None]
    full = [r for r in played if not r.barge_in]  # a reply cut by barge-in ends early by design
    stages = {s: percentiles([r.server.get(s) for r in answered if r.server]) for s in STAGES}
    return {
        "sessions": len(sessions),
        "admitted": len(sessions - refused),
        "refused": len(refused),
        "turns": len(turns),
        "answered": len(answered),
        "errors_by_status": dict(Counter(r.status for r in records if r.status != "OK")),
        "reasons": dict(Counter(r.reason for r in answered)),
        "ttfa_ms": percentiles([r.ttfa_ms for r in answered]),
        "server_first_audio_ms": percentiles([r.server.get("first_audio_ms") for r in answered if r.server]),
        "stages_ms": stages,
        "server_rtf_p50": percentiles([r.server.get("real_time_factor") for r in full if r.server])["p50"],
        "underrun_ms": percentiles([r.underrun_ms for r in full]),
        "underrun_turn_share": round(sum(r.underrun_ms > 0 for r in full) / len(full), 4) if full else None,
        "continuity": round(sum(bool(r.continuous) for r in full) / len(full), 4) if full else None,
        "reply_audio_s": percentiles([r.reply_audio_s for r in full]),
        "barge_in_stop_ms": percentiles([r.barge_in_stop_ms for r in turns if r.barge_in_stop_ms is not None]),
        "client_send_lag_ms_max": round(max((r.send_lag_ms for r in turns), default=0.0), 1),
    }


def summarize(records: list[TurnRecord]) -> dict:
    """{target: {level: summary}} plus each target's totals over all levels."""
    groups: dict[str, dict[float, list[TurnRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        groups[r.target][r.level].append(r)
    out = {}
    for target, levels in groups.items():
        everything = [r for rs in levels.values() for r in rs]
        out[target] = {"all": summarize_group(everything),
                       "levels": {str(level): summarize_group(rs) for level, rs in sorted(levels.items())}}
    return out
