"""The assistant side of GLM-4-Voice's streaming-thoughts template: 13 text ids, then 26 speech ids, ...

When one stream runs out the other continues alone (text usually ends first, then the rest of the speech),
and the turn ends with `<|user|>`, the id that stops generation at the next user turn.
"""

from __future__ import annotations

from glmvoice.models.text_tokenizer import TextTokenizer

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
