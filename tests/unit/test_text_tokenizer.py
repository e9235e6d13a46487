"""The GLM-4 text tokenizer: reading the published file formats, ids by name, BPE encoding."""

import base64
import json

import pytest
import regex

from glmvoice.models.text_tokenizer import GLM4_SPECIALS, PAT_STR, TextTokenizer
from training.bpe_tokenizer import TINY_CORPUS, build_tiny_tokenizer, train_bpe, write_tokenizer

SAMPLES = [
    "Hello, how are you today?",
    "今天天气很好，我们去公园散步吧。",
    "Mixed 中英文 text, 12345 digits!\n\nnew  lines",
    "emoji 🙂 and rare 龍 characters",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), audio_codebook_size=1024)


def reference_bpe(ranks: dict[bytes, int], text: str) -> list[int]:
    """Textbook rank-based BPE (merge the lowest-ranked adjacent pair until none is in the vocabulary)."""
    ids = []
    for piece in regex.findall(PAT_STR, text):
        parts = [bytes([b]) for b in piece.encode()]
        while True:
            candidates = [(ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:])) if a + b in ranks]
            if not candidates:
                break
            _, i = min(candidates)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids += [ranks[p] for p in parts]
    return ids


def test_encode_matches_reference_bpe_and_round_trips(tiny):
    for text in SAMPLES:
        ids = tiny.encode(text)
        assert ids == reference_bpe(tiny.mergeable_ranks, text)
        assert tiny.decode(ids) == text
    assert len(tiny.encode(SAMPLES[0])) < len(SAMPLES[0].encode())  # merges are in use


def test_pre_tokenization_splits_digits_in_groups_of_three(tiny):
    pieces = [tiny.decode([i]) for i in tiny.encode("12345")]
    assert "".join(pieces) == "12345"
    boundaries, pos = set(), 0
    for p in pieces:
        pos += len(p)
        boundaries.add(pos)
    assert 3 in boundaries  # no token crosses the "123|45" split


def test_specials_by_name_and_prompt_prefix(tiny):
    ranks = len(tiny.mergeable_ranks)
    assert [tiny.token_id(n) for n in GLM4_SPECIALS] == list(range(ranks, ranks + len(GLM4_SPECIALS)))
    prompt = tiny.encode_prompt("<|user|>\nhi<|assistant|>")
    assert prompt[:2] == [tiny.token_id("[gMASK]"), tiny.token_id("<sop>")]
    assert prompt[2] == tiny.token_id("<|user|>") and prompt[-1] == tiny.token_id("<|assistant|>")
    plain = tiny.encode("<|user|>")  # user text never turns into control tokens
    assert tiny.token_id("<|user|>") not in plain and tiny.decode(plain) == "<|user|>"
    assert set(tiny.stop_ids) == {tiny.token_id(n) for n in ("<|user|>", "<|endoftext|>", "<|observation|>")}


def test_audio_tokens(tiny):
    assert tiny.audio_codebook_size == 1024
    assert tiny.audio_offset == tiny.token_id("<|audio_0|>")
    assert tiny.token_id("<|audio_1023|>") == tiny.audio_offset + 1023
    assert tiny.is_audio(tiny.audio_offset) and tiny.is_audio(tiny.audio_offset + 1023)
    assert not tiny.is_audio(tiny.audio_offset - 1) and not tiny.is_audio(tiny.audio_offset + 1024)
    assert tiny.audio_ids([0, 7]) == [tiny.audio_offset, tiny.audio_offset + 7]
    with pytest.raises(ValueError):
        tiny.audio_ids([1024])


def test_reads_published_layout_with_ids_from_added_tokens_decoder(tmp_path):
    """As in glm-4-voice-9b: added_tokens_decoder gives every special an explicit id, and the speech
    tokens do not follow <|end_of_audio|> directly (real: 151344 then <|audio_0|> at 152353)."""
    ranks = train_bpe(TINY_CORPUS[:4], 50)
    base = len(ranks) + len(GLM4_SPECIALS)
    extra = {"<|begin_of_audio|>": base, "<|end_of_audio|>": base + 1}
    extra |= {f"<|audio_{c}|>": base + 40 + c for c in range(16)}
    write_tokenizer(tmp_path, ranks, extra)
    line = (tmp_path / "tokenizer.model").read_text().splitlines()[-1]  # the last merge
    token, rank = line.split()
    assert ranks[base64.b64decode(token)] == int(rank)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"][str(base + 40)]["content"] == "<|audio_0|>"
    tok = TextTokenizer.from_directory(tmp_path)
    assert tok.audio_offset == base + 40 and tok.audio_codebook_size == 16
    assert tok.token_id("<|end_of_audio|>") == base + 1
    assert tok.vocab_size == base + 40 + 16


def test_builtin_specials_numbered_after_ranks_without_config(tmp_path):
    ranks = train_bpe(TINY_CORPUS[:4], 20)
    write_tokenizer(tmp_path, ranks, {"<|audio_0|>": 999})
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match="audio_0"):  # the speech tokens come only from the config
        TextTokenizer.from_directory(tmp_path)


def test_tiny_tokenizer_is_deterministic(tmp_path):
    build_tiny_tokenizer(tmp_path / "a", audio_codebook_size=8)
    build_tiny_tokenizer(tmp_path / "b", audio_codebook_size=8)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
