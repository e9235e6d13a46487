"""LM sequences that mix text and speech ids: the assistant's streaming-thoughts turns, and the continued
pre-training corpus.

Assistant turns: 13 text ids, then 26 speech ids, ...; when one stream runs out the other continues alone
(text usually ends first, then the rest of the speech), and the turn ends with `<|user|>`, the id that stops
generation at the next user turn.

Pre-training (GLM-4-Voice's recipe at small scale): the paper turns a text corpus into interleaved
speech-text documents by replacing spans of text with speech tokens, and adds speech-text pairs in both
directions. Here a span is a sentence whose speech we have (espeak-ng and LibriVox, tokenized by our own
speech tokenizer), so a document reads, e.g., text · speech · text. Pure text carries knowledge the spoken
data lacks: every arithmetic fact appears as text, including those whose spoken questions are held out,
which is how the held-out accuracy measures text-to-speech transfer rather than memory.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from glmvoice.models.text_tokenizer import AUDIO_BEGIN, AUDIO_END, TextTokenizer

TEXT_RUN, SPEECH_RUN = 13, 26


def interleave(text_ids: list[int], speech_ids: list[int], text_run: int = TEXT_RUN, speech_run: int = SPEECH_RUN) -> list[int]:
    out: list[int] = []
    t = s = 0
    while t < len(text_ids) or s < len(speech_ids):
        out += text_ids[t : t + text_run]
        t += text_run
        out += speech_ids[s : s + speech_run]
        s += speech_run
    return out


def assistant_turn(tokenizer: TextTokenizer, answer_text: str, answer_codes: list[int]) -> list[int]:
    """Completion ids for one reply: interleaved text and `<|audio_N|>` ids, closed by `<|user|>`."""
    ids = interleave(tokenizer.encode(answer_text), tokenizer.audio_ids(answer_codes))
    return ids + [tokenizer.token_id("<|user|>")]


@dataclass(frozen=True)
class Spoken:
    """A sentence and the speech codes of one recording of it."""

    text: str
    codes: list[int]


def speech_span(tokenizer: TextTokenizer, codes: list[int]) -> list[int]:
    return [tokenizer.token_id(AUDIO_BEGIN)] + tokenizer.audio_ids(codes) + [tokenizer.token_id(AUDIO_END)]


def asr_sequence(tokenizer: TextTokenizer, item: Spoken) -> list[int]:
    """Speech, then what was said."""
    return speech_span(tokenizer, item.codes) + tokenizer.encode(item.text)


def tts_sequence(tokenizer: TextTokenizer, item: Spoken) -> list[int]:
    """Text, then its speech."""
    return tokenizer.encode(item.text) + speech_span(tokenizer, item.codes)


def interleaved_document(tokenizer: TextTokenizer, sentences: list[Spoken], spoken: list[bool]) -> list[int]:
    """Sentences in order, each as its text or (where `spoken`) as its speech span, separated by a space."""
    ids: list[int] = []
    for item, as_speech in zip(sentences, spoken):
        ids += speech_span(tokenizer, item.codes) if as_speech else tokenizer.encode(item.text + " ")
    return ids


def pretraining_sequences(tokenizer: TextTokenizer, spoken: list[Spoken], texts: list[str], seed: int,
                          documents: int, sentences_per_document: int = 3, speech_fraction: float = 0.5) -> list[list[int]]:
    """The continued pre-training corpus: every text alone, ASR and TTS pairs of every recording, and
    `documents` interleaved documents of random recordings with each sentence spoken with probability
    `speech_fraction`. Deterministic in `seed`."""
    rng = random.Random(seed)
    sequences = [tokenizer.encode(text) for text in texts]
    for item in spoken:
        sequences += [asr_sequence(tokenizer, item), tts_sequence(tokenizer, item)]
    for _ in range(documents):
        chosen = rng.sample(spoken, min(sentences_per_document, len(spoken)))
        sequences.append(interleaved_document(tokenizer, chosen, [rng.random() < speech_fraction for _ in chosen]))
    return sequences
