"""Server-side voice activity detection with silero-vad's ONNX model (shipped in the silero-vad wheel).

We run the model file with onnxruntime ourselves: importing the `silero_vad` package would set torch's
global thread count. One `VadModel` (an ONNX session, thread-safe) serves every stream; each `VadStream`
carries its own recurrent state and 64-sample context.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # samples per model call at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window the model sees in front of each window


def silero_model_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is not installed (pip install silero-vad)")
    return Path(spec.submodule_search_locations[0]) / "data" / "silero_vad.onnx"


class VadModel:
    def __init__(self, path: Path | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path or silero_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def probability(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """window: [CONTEXT + WINDOW] float32 at 16 kHz, state: [2, 1, 128] -> (speech probability, new state)."""
        out, new_state = self.session.run(
            None, {"input": window[None], "state": state, "sr": np.array(SAMPLE_RATE, dtype=np.int64)}
        )
        return float(out.reshape(-1)[0]), new_state


@dataclass
class VadEvent:
    kind: str  # "start" or "stop"
    sample: int  # 16 kHz sample index in the stream where it was decided


@dataclass
class VadStream:
    """Speech start after `min_speech_ms` of speech windows; stop after `silence_ms` of non-speech."""

    model: VadModel
    threshold: float = 0.5
    min_speech_ms: int = 96
    silence_ms: int = 500
    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    position: int = 0  # samples consumed into windows
    speaking: bool = False
    run: int = 0  # consecutive windows agreeing with a state change

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), np.float32)
        self.context = np.zeros(CONTEXT, np.float32)
        self.pending = np.zeros(0, np.float32)
        self.speaking, self.run = False, 0

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """16 kHz audio in (any length) -> the start/stop events it decided."""
        self.pending = np.concatenate([self.pending, np.asarray(samples, np.float32)])
        events = []
        start_windows = max(1, -(-self.min_speech_ms * SAMPLE_RATE // (1000 * WINDOW)))
        stop_windows = max(1, -(-self.silence_ms * SAMPLE_RATE // (1000 * WINDOW)))
        while len(self.pending) >= WINDOW:
            window, self.pending = self.pending[:WINDOW], self.pending[WINDOW:]
            prob, self.state = self.model.probability(np.concatenate([self.context, window]), self.state)
            self.context = window[-CONTEXT:]
            self.position += WINDOW
            is_speech = prob >= self.threshold
            # While silent, count speech windows; while speaking, count silent windows (a lower bar,
            # as silero's own iterator does, so brief dips inside words do not end the turn).
            changing = is_speech if not self.speaking else prob < self.threshold - 0.15
            self.run = self.run + 1 if changing else 0
            if not self.speaking and self.run >= start_windows:
                self.speaking, self.run = True, 0
                events.append(VadEvent("start", self.position))
            elif self.speaking and self.run >= stop_windows:
                self.speaking, self.run = False, 0
                events.append(VadEvent("stop", self.position))
        return events
