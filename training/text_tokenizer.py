"""The tiny LM's text tokenizer, trained on the text the tiny LM learns from.

glmvoice's tiny tokenizer is a byte-level BPE over a small generic corpus; it spells the system prompt and
the spoken-arithmetic answers in ~140 and ~16 pieces, and every training step pays for those positions.
Trained on that corpus plus the chat template's fixed strings and the task's texts, the same BPE recipe
(glmvoice.models.text_tokenizer.train_bpe, written in the published layout with GLM-4's specials, the audio
markers and one `<|audio_N|>` per speech code) makes sequences ~2.5x shorter.
"""

from __future__ import annotations

from pathlib import Path

from glmvoice.chat import ASSISTANT_PREFIX, SPEECH_SYSTEM_PROMPT, TEXT_SYSTEM_PROMPT
from glmvoice.models.text_tokenizer import (
    AUDIO_BEGIN, AUDIO_END, GLM4_SPECIALS, TINY_CORPUS, TextTokenizer, audio_token_name, train_bpe, write_tokenizer,
)

MERGES = 800


def build_text_tokenizer(directory: str | Path, texts: list[str], audio_codebook_size: int,
                         num_merges: int = MERGES) -> TextTokenizer:
    corpus = [*TINY_CORPUS, *[SPEECH_SYSTEM_PROMPT, TEXT_SYSTEM_PROMPT, ASSISTANT_PREFIX] * 4, *texts]
    ranks = train_bpe(corpus, num_merges)
    first = len(ranks) + len(GLM4_SPECIALS)
    extra = {AUDIO_BEGIN: first, AUDIO_END: first + 1}
    extra |= {audio_token_name(code): first + 2 + code for code in range(audio_codebook_size)}
    write_tokenizer(directory, ranks, extra)
    return TextTokenizer.from_directory(directory)
