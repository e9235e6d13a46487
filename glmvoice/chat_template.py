"""GLM-4-Voice's chat template and the router that splits LM output into text and speech.

The official demo builds, per turn, the string
  `<|system|>\\n{system prompt}` (first turn only) + `<|user|>\\n{input}<|assistant|>streaming_transcription\\n`
and the server tokenizes it with `[gMASK]<sop>` prepended. Speech input is `<|begin_of_audio|>` + speech
tokens + `<|end_of_audio|>`. We keep the history as ids (prompt + completion of every turn), so earlier
turns are never re-tokenized.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from glmvoice.models.text_tokenizer import AUDIO_BEGIN, AUDIO_END, TextTokenizer

SPEECH_SYSTEM_PROMPT = (
    "User will provide you with a speech instruction. Do it step by step. First, think about the "
    "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens. "
)
TEXT_SYSTEM_PROMPT = (
    "User will provide you with a text instruction. Do it step by step. First, think about the "
    "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens."
)
ASSISTANT_PREFIX = "streaming_transcription\n"


@dataclass
class Conversation:
    """Multi-turn history as LM ids; `[gMASK]<sop>` and the system prompt appear once, at the start."""

    tokenizer: TextTokenizer
    ids: list[int] = field(default_factory=list)

    def _turn(self, system_prompt: str, user_ids: list[int]) -> list[int]:
        tok = self.tokenizer
        prompt: list[int] = []
        if not self.ids:
            prompt += [tok.token_id("[gMASK]"), tok.token_id("<sop>"), tok.token_id("<|system|>")]
            prompt += tok.encode("\n" + system_prompt)
        prompt += [tok.token_id("<|user|>")] + user_ids + [tok.token_id("<|assistant|>")] + tok.encode(ASSISTANT_PREFIX)
        self.ids = self.ids + prompt
        return list(self.ids)

    def add_speech(self, codes, instruction: str = "") -> list[int]:
        """User turn from speech codes; returns the whole prompt (history + this turn). `instruction`: a
        text style instruction in front of the audio (emotion, speed, dialect), as a user who types
        "speak slowly" and then talks would produce. Training's style data and serving share this form."""
        tok = self.tokenizer
        lead = tok.encode("\n" + instruction + "\n") if instruction else tok.encode("\n")
        user = lead + [tok.token_id(AUDIO_BEGIN)] + tok.audio_ids(codes) + [tok.token_id(AUDIO_END)]
        return self._turn(SPEECH_SYSTEM_PROMPT, user)

    def add_text(self, text: str) -> list[int]:
        """User turn from text (the text follows `\\n` in one piece, as the official string does)."""
        return self._turn(TEXT_SYSTEM_PROMPT, self.tokenizer.encode("\n" + text))

    def add_completion(self, ids) -> None:
        """The assistant's output ids of this turn, without the stop id (the next `<|user|>` ends it)."""
        stops = set(self.tokenizer.stop_ids)
        self.ids = self.ids + [int(i) for i in ids if int(i) not in stops]


@dataclass
class Routed:
    """What one output id means: a text delta (possibly empty while a UTF-8 character is incomplete),
    a speech code, a special token name, an id beyond the tokenizer (the embedding's padding rows),
    or the end of the turn."""

    text: str = ""
    speech_code: int | None = None
    special: str | None = None
    unknown: bool = False
    stop: bool = False


class OutputRouter:
    """Routes a stream of LM output ids: `<|audio_N|>` -> speech code N; text -> incremental UTF-8 text."""

    def __init__(self, tokenizer: TextTokenizer, stop_ids=None):
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(tokenizer.stop_ids if stop_ids is None else stop_ids)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.speech_codes: list[int] = []
        self.stopped = False

    def push(self, token_id: int) -> Routed:
        tok = self.tokenizer
        token_id = int(token_id)
        if token_id in self.stop_ids:
            self.stopped = True
            return Routed(text=self._flush(), stop=True)
        if tok.is_audio(token_id):
            code = token_id - tok.audio_offset
            self.speech_codes.append(code)
            return Routed(speech_code=code)
        if tok.is_special(token_id):
            return Routed(special=tok.token_bytes(token_id).decode())
        if not tok.is_text(token_id):
            return Routed(unknown=True)
        delta = self._utf8.decode(tok.token_bytes(token_id))
        self.text += delta
        return Routed(text=delta)

    def _flush(self) -> str:
        """Emits what an incomplete UTF-8 sequence left pending (as U+FFFD) and resets the decoder."""
        delta = self._utf8.decode(b"", final=True)
        self.text += delta
        return delta

    def finish(self) -> str:
        """End of stream without a stop id (length limit): returns the remaining text delta."""
        return self._flush()
