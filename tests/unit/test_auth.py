"""API keys: which metadata authenticates, what the identity is, and that a wrong key never passes."""

import hashlib

import pytest

from services.orchestrator.auth import ANONYMOUS, ApiKeys
from services.orchestrator.errors import Unauthenticated

KEYS = ApiKeys(["key-alpha-123", "key-beta-456"])


def identity_of(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@pytest.mark.parametrize("metadata, key", [
    ({"authorization": "Bearer key-alpha-123"}, "key-alpha-123"),
    ({"authorization": "bearer   key-beta-456  "}, "key-beta-456"),  # scheme case-insensitive, value trimmed
    ({"x-api-key": "key-beta-456"}, "key-beta-456"),
    ({"x-api-key": "key-alpha-123", "authorization": "Bearer key-beta-456"}, "key-alpha-123"),  # x-api-key first
])
def test_a_known_key_gives_its_identity(metadata, key):
    assert KEYS.identity(metadata) == identity_of(key)


def test_identities_differ_per_key_and_do_not_contain_it():
    a, b = KEYS.identity({"x-api-key": "key-alpha-123"}), KEYS.identity({"x-api-key": "key-beta-456"})
    assert a != b and "alpha" not in a and len(a) == len("key-") + 16


MISSING = "missing API key: send 'authorization: Bearer <key>' or 'x-api-key: <key>'"
NOT_BEARER = "authorization metadata must be 'Bearer <api key>'"
INVALID = "invalid API key"


@pytest.mark.parametrize("metadata, message", [
    ({}, MISSING),
    ({"authorization": "Basic abc"}, NOT_BEARER),
    ({"authorization": "Bearer "}, NOT_BEARER),
    ({"authorization": "Bearer"}, NOT_BEARER),
    ({"authorization": "Bearer key-alpha-12"}, INVALID),  # a prefix of a key
    ({"authorization": "Bearer key-alpha-1234"}, INVALID),  # a key with more after it
    ({"x-api-key": "KEY-ALPHA-123"}, INVALID),
    ({"x-api-key": ""}, MISSING),
])
def test_anything_else_is_unauthenticated(metadata, message):
    # The whole message: it is what a client is told to fix, word for word.
    with pytest.raises(Unauthenticated) as refused:
        KEYS.identity(metadata)
    assert str(refused.value) == message


def test_no_keys_file_means_anonymous_and_an_empty_file_admits_nobody(tmp_path):
    assert ApiKeys.from_file(None).identity({}) == ANONYMOUS
    empty = tmp_path / "keys"
    empty.write_text("# no keys yet\n\n")
    keys = ApiKeys.from_file(empty)
    assert keys.keys == []
    with pytest.raises(Unauthenticated):
        keys.identity({"x-api-key": "# no keys yet"})


def test_keys_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# comment\nkey-one\n\n  key-two  \n")
    keys = ApiKeys.from_file(path)
    assert keys.keys == ["key-one", "key-two"]
    assert keys.identity({"x-api-key": "key-two"}) == identity_of("key-two")
