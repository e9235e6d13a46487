"""GLM-4's text tokenizer: tiktoken-format BPE (`tokenizer.model`) plus named special tokens.

`tokenizer.model` holds one "base64(token bytes) rank" line per mergeable token. GLM-4 numbers its 14
built-in specials right after the last rank (ChatGLM4Tokenizer); `tokenizer_config.json`'s
`added_tokens_decoder` lists specials with explicit ids (GLM-4-Voice adds `<|begin_of_audio|>`,
`<|end_of_audio|>` and `<|audio_0|>`..). Every special id is looked up by name from these files.
For the tiny preset, `build_tiny_tokenizer` trains a small byte-level BPE and writes the same files.
"""

from __future__ import annotations

import base64
import collections
import json
import re
from pathlib import Path
from typing import Sequence

import regex
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
# Tokenizers our code builds; the real one is read from the published directory. The tiny speech
# codebook (1024 codes) is the convention shared by the three tiny networks.
tokenizer_presets = {"tiny": dict(audio_codebook_size=1024, num_merges=300)}


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
    def from_directory(cls, directory: str | Path) -> "TextTokenizer":
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


# -- the tiny preset's tokenizer ----------------------------------------------------------------------
TINY_CORPUS = (
    "Hello, how are you today? I am fine, thank you. What would you like to talk about?",
    "The weather is nice today, so let us take a walk in the park and listen to the birds.",
    "Please tell me a short story about a little cat who wanted to see the sea.",
    "Once upon a time there was a little cat. She lived in a small house near the river.",
    "Can you speak more slowly? I would like to understand every word that you say.",
    "Sure, I will speak more slowly. Let me know if you want me to repeat anything.",
    "What is the capital of France? The capital of France is Paris, a city of light.",
    "Music makes people happy. Do you like to sing songs or play the piano at home?",
    "I think the best way to learn a language is to speak it every day with friends.",
    "Thank you for your help. Have a good day, and see you again tomorrow morning.",
    "The train leaves at nine in the morning and arrives in the city before noon.",
    "Numbers like 12, 345 and 2024 are split into groups of at most three digits.",
    "你好，今天过得怎么样？我很好，谢谢你。你想聊些什么呢？",
    "今天天气很好，我们去公园散步吧，还可以听听小鸟唱歌。",
    "请给我讲一个小猫想去看大海的故事。",
    "从前有一只小猫，她住在河边的一座小房子里。",
    "你能说得慢一点吗？我想听懂你说的每一个字。",
    "好的，我会说得慢一点。如果你想让我重复，请告诉我。",
    "法国的首都是哪里？法国的首都是巴黎。",
    "音乐让人快乐。你喜欢唱歌还是在家弹钢琴？",
    "我觉得学习语言最好的方法就是每天和朋友说话。",
    "谢谢你的帮助，祝你今天愉快，明天早上见。",
    "火车早上九点出发，中午之前到达城市。",
    "我们一起学习，一起进步，一起说中文和英文。",
)


def train_bpe(corpus, num_merges: int) -> dict[bytes, int]:
    """Deterministic byte-level BPE: ranks 0..255 are single bytes, then one rank per merge.

    Each step merges the most frequent adjacent pair (ties: the lexicographically smallest pair of
    byte strings) within pre-tokenised words, stopping early when no pair occurs twice.
    """
    ranks = {bytes([b]): b for b in range(256)}
    words = collections.Counter(
        piece.encode() for text in corpus for piece in regex.findall(PAT_STR, text)
    )
    split = {word: [bytes([b]) for b in word] for word in words}
    for _ in range(num_merges):
        pairs: collections.Counter = collections.Counter()
        for word, parts in split.items():
            for pair in zip(parts, parts[1:]):
                pairs[pair] += words[word]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < 2:
            break
        merged = best[0] + best[1]
        ranks.setdefault(merged, len(ranks))
        for word, parts in split.items():
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            split[word] = out
    return ranks


def write_tokenizer(directory: str | Path, ranks: dict[bytes, int], extra_specials: dict[str, int]) -> None:
    """Writes tokenizer.model and tokenizer_config.json in GLM-4-Voice's published layout."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in ordered]
    (directory / "tokenizer.model").write_text("\n".join(lines) + "\n")
    specials = {name: i for i, name in enumerate(GLM4_SPECIALS, start=len(ranks))} | extra_specials
    added = {
        str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                 "special": True}
        for name, i in sorted(specials.items(), key=lambda kv: kv[1])
    }
    config = {
        "added_tokens_decoder": added,
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "ChatGLM4Tokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


def build_tiny_tokenizer(
    directory: str | Path, audio_codebook_size: int, num_merges: int = 300, extra_corpus: Sequence[str] = ()
) -> TextTokenizer:
    """Trains the tiny BPE (on TINY_CORPUS plus `extra_corpus`), adds GLM-4's specials, the audio markers
    and `audio_codebook_size` speech tokens."""
    ranks = train_bpe([*TINY_CORPUS, *extra_corpus], num_merges)
    first = len(ranks) + len(GLM4_SPECIALS)
    extra = {AUDIO_BEGIN: first, AUDIO_END: first + 1}
    extra |= {audio_token_name(code): first + 2 + code for code in range(audio_codebook_size)}
    write_tokenizer(directory, ranks, extra)
    return TextTokenizer.from_directory(directory)
