"""API keys shared by the gRPC and HTTP front doors: a file with one key per line.

A caller's identity (the session owner stored in Redis) is a digest of its key, so keys never reach Redis.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from services.orchestrator.errors import Unauthenticated

ANONYMOUS = "anonymous"


class ApiKeys:
    def __init__(self, keys: list[str] | None):
        # None: authentication is off (local development); every caller is ANONYMOUS.
        self.keys = None if keys is None else [k for k in keys if k]

    @classmethod
    def from_file(cls, path: Path | None) -> ApiKeys:
        if path is None:
            return cls(None)
        return cls([line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")])

    def identity(self, metadata: dict[str, str]) -> str:
        """`authorization: Bearer <key>` or `x-api-key: <key>` -> the caller's identity; raises Unauthenticated."""
        if self.keys is None:
            return ANONYMOUS
        key = metadata.get("x-api-key", "")
        bearer = metadata.get("authorization", "")
        if not key and bearer:
            scheme, _, value = bearer.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <api key>'")
            key = value.strip()
        if not key:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>' or 'x-api-key: <key>'")
        # Compare against every key in constant time, so timing does not reveal a prefix.
        if not any(hmac.compare_digest(key.encode(), k.encode()) for k in self.keys):
            raise Unauthenticated("invalid API key")
        return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]
