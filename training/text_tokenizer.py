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
from glmvoice.models.text_tokenizer import TextTokenizer, build_tiny_tokenizer

MERGES = 800


def build_text_tokenizer(directory: str | Path, texts: list[str], audio_codebook_size: int,
                         num_merges: int = MERGES) -> TextTokenizer:
    extra = [*[SPEECH_SYSTEM_PROMPT, TEXT_SYSTEM_PROMPT, ASSISTANT_PREFIX] * 4, *texts]
    return build_tiny_tokenizer(directory, audio_codebook_size, num_merges, extra_corpus=extra)
