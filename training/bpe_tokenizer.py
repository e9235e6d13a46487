"""Tiny text tokenizers: a deterministic byte-level BPE trainer, written in GLM-4-Voice's published layout
(glmvoice.models.text_tokenizer reads it like the real one).

The generic tiny tokenizer (`build_tiny_tokenizer`) is a byte-level BPE over a small generic corpus; it spells the system prompt and
the spoken-arithmetic answers in ~140 and ~16 pieces, and every training step pays for those positions.
Trained on that corpus plus the chat template's fixed strings and the task's texts, the same BPE recipe
(`train_bpe`, written in the published layout with GLM-4's specials, the audio
markers and one `<|audio_N|>` per speech code) makes sequences ~2.5x shorter.
"""

from __future__ import annotations

import base64
import collections
import json
from collections.abc import Sequence
from pathlib import Path

import regex

from glmvoice.chat_template import ASSISTANT_PREFIX, SPEECH_SYSTEM_PROMPT, TEXT_SYSTEM_PROMPT
from glmvoice.models.text_tokenizer import (
    AUDIO_BEGIN,
    AUDIO_END,
    GLM4_SPECIALS,
    PAT_STR,
    TextTokenizer,
    audio_token_name,
)

MERGES = 800
# The generic tiny tokenizer; the tiny speech codebook (1024 codes) is the convention shared by the three
# tiny networks.
TINY_TOKENIZER = dict(audio_codebook_size=1024, num_merges=300)



def build_text_tokenizer(directory: str | Path, texts: list[str], audio_codebook_size: int,
                         num_merges: int = MERGES) -> TextTokenizer:
    extra = [*[SPEECH_SYSTEM_PROMPT, TEXT_SYSTEM_PROMPT, ASSISTANT_PREFIX] * 4, *texts]
    return build_tiny_tokenizer(directory, audio_codebook_size, num_merges, extra_corpus=extra)


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
