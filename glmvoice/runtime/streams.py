"""The one streaming protocol of the runtime (as moshi has one for all its modules).

A stream is one speaker's or one reply's state, keyed by id: `push` input and get what is ready, `finalize`
to flush the tail, `reset` to start afresh under the same id. A registry opens and closes streams by id;
`with registry.stream(id, ...) as s:` closes it whatever happens. The speech tokenizer (audio -> codes) and
the speech decoder (codes -> audio) both follow it, so the services, adapters and tests drive them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, Protocol, TypeVar


class Stream(Protocol):
    stream_id: str

    def push(self, chunk: Any) -> Any: ...

    def finalize(self) -> Any: ...

    def reset(self) -> None: ...


S = TypeVar("S", bound=Stream)


class StreamRegistry(Generic[S]):
    """Open streams by id. Subclasses make a stream in `_new` and may release more in `_released`."""

    # Makes the stream for `open(stream_id, **options)`; each registry has its own options.
    _new: Callable[..., S]

    def __init__(self) -> None:
        self._streams: dict[str, S] = {}

    def _released(self, stream_id: str) -> None:
        """Called after a stream is closed."""

    def open(self, stream_id: str, **options: Any) -> S:
        """Opens a stream that lives until `close` (servers whose streams span many requests)."""
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id!r} is already open")
        self._streams[stream_id] = stream = self._new(stream_id, **options)
        return stream

    def close(self, stream_id: str) -> None:
        """Forgets the stream; closing an unknown id is a no-op (a cancelled stream may be closed twice)."""
        if self._streams.pop(stream_id, None) is not None:
            self._released(stream_id)

    @contextmanager
    def stream(self, stream_id: str, **options: Any) -> Iterator[S]:
        stream = self.open(stream_id, **options)
        try:
            yield stream
        finally:
            self.close(stream_id)

    def __getitem__(self, stream_id: str) -> S:
        return self._streams[stream_id]

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._streams

    def __len__(self) -> int:
        return len(self._streams)
