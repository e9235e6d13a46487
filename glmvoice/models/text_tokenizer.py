"""GLM-4's text tokenizer: tiktoken-format BPE (`tokenizer.model`) plus named special tokens.

`tokenizer.model` holds one "base64(token bytes) rank" line per mergeable token. GLM-4 numbers its 14
built-in specials right after the last rank (ChatGLM4Tokenizer); `tokenizer_config.json`'s
`added_tokens_decoder` lists specials with explicit ids (GLM-4-Voice adds `<|begin_of_audio|>`,
`<|end_of_audio|>` and `<|audio_0|>`..). Every special id is looked up by name from these files.
The tiny preset's tokenizer is trained and written in the same layout by training/bpe_tokenizer.py.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import tiktoken

# GLM-4's pre-tokenisation pattern (tokenization_chatglm.py).
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# ChatGLM4Tokenizer's built-in specials, numbered from len(mergeable ranks) in this order.
GLM4_SPECIALS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
    "<|end_of_video|>",
)
AUDIO_BEGIN, AUDIO_END = "<|begin_of_audio|>", "<|end_of_audio|>"
STOP_TOKENS = ("<|user|>", "<|endoftext|>", "<|observation|>")  # `<|user|>` ends an assistant turn
_AUDIO_NAME = re.compile(r"<\|audio_(\d+)\|>")


def audio_token_name(code: int) -> str:
    return f"<|audio_{code}|>"


class TextTokenizer:
    def __init__(self, mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int]):
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = special_tokens
        self._special_names = {i: name for name, i in special_tokens.items()}
        self._decoder = {rank: token for token, rank in mergeable_ranks.items()}
        self._encoding = tiktoken.Encoding(
            name="glm4", pat_str=PAT_STR, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens
        )
        audio = sorted((int(m.group(1)), i) for name, i in special_tokens.items() if (m := _AUDIO_NAME.fullmatch(name)))
        if not audio or audio[0][0] != 0:
            raise ValueError("tokenizer has no <|audio_0|> token")
        self.audio_offset = audio[0][1]
        if [code for code, _ in audio] != list(range(len(audio))) or any(i != self.audio_offset + c for c, i in audio):
            raise ValueError("speech tokens <|audio_N|> must have consecutive codes and ids")
        self.audio_codebook_size = len(audio)

    @classmethod
    def from_directory(cls, directory: str | Path) -> TextTokenizer:
        directory = Path(directory)
        ranks: dict[bytes, int] = {}
        for line in (directory / "tokenizer.model").read_text().splitlines():
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        specials = {name: i for i, name in enumerate(GLM4_SPECIALS, start=len(ranks))}
        config_path = directory / "tokenizer_config.json"
        if config_path.exists():
            added = json.loads(config_path.read_text()).get("added_tokens_decoder", {})
            # Explicit ids in added_tokens_decoder win, as in HF's added-token handling.
            specials.update({entry["content"]: int(i) for i, entry in added.items()})
        return cls(ranks, specials)

    # -- ids by name ------------------------------------------------------------------------------
    def token_id(self, name: str) -> int:
        if name not in self.special_tokens:
            raise KeyError(f"no special token {name!r}")
        return self.special_tokens[name]

    @property
    def vocab_size(self) -> int:
        """Highest id + 1 (the model's embedding may be padded beyond it)."""
        return max(max(self.mergeable_ranks.values()), max(self.special_tokens.values())) + 1

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return tuple(self.token_id(name) for name in STOP_TOKENS)

    def is_audio(self, token_id: int) -> bool:
        return self.audio_offset <= token_id < self.audio_offset + self.audio_codebook_size

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_names

    def is_text(self, token_id: int) -> bool:
        return token_id in self._decoder

    def audio_ids(self, codes) -> list[int]:
        """Speech codes -> LM ids."""
        out = []
        for code in codes:
            if not 0 <= int(code) < self.audio_codebook_size:
                raise ValueError(f"speech code {code} outside 0..{self.audio_codebook_size - 1}")
            out.append(self.audio_offset + int(code))
        return out

    # -- text -------------------------------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Plain text -> ids. With allow_special, special names in the text become their ids (as HF does)."""
        if allow_special:
            return self._encoding.encode(text, allowed_special="all")
        return self._encoding.encode(text, disallowed_special=())

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt string as the official server tokenizes it: `[gMASK]<sop>` + text with specials."""
        return [self.token_id("[gMASK]"), self.token_id("<sop>")] + self.encode(text, allow_special=True)

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self._special_names:
            return self._special_names[token_id].encode()
        if token_id not in self._decoder:
            raise ValueError(f"token id {token_id} is not in the vocabulary")
        return self._decoder[token_id]

    def decode(self, ids) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def vocabulary_facts(self) -> dict:
        return {
            "text_vocab_size": len(self.mergeable_ranks),
            "tokenizer_vocab_size": self.vocab_size,
            "audio_offset": self.audio_offset,
            "audio_codebook_size": self.audio_codebook_size,
            "special_ids": {name: self.token_id(name) for name in (*GLM4_SPECIALS, AUDIO_BEGIN, AUDIO_END)
                            if name in self.special_tokens},
            "stop_ids": list(self.stop_ids),
        }
