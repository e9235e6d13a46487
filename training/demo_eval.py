"""`python -m training.demo_eval --checkpoints DIR`: the demo's task end to end, in voices training never heard.

Each question is spoken by one of flite's voices awb and rms (a different synthesizer from the espeak-ng voices
every plan trains on; `--voices piper:joe-us`: piper's neural voice), then: our speech tokenizer -> the LM
(greedy, the demo's setting) -> the reply's speech codes -> our speech decoder (whole, or `--streaming` as the
services decode) -> faster-whisper base (training.asr, pinned). Prints and writes (--out/metrics.json):

- accuracy: the reply's text is the expected answer (normalised);
- reply WER: what whisper hears in the reply audio against the reply's own text (can the answer be heard?);
- stop share: replies that ended on the model's own stop id rather than the token budget;
- three replies: question, reply text, what whisper heard (their WAVs under --out).

`--say TEXT` only speaks TEXT in a held-out voice (`make demo`'s question); `--hear DIR` only transcribes the reply
`services.demo` wrote.

The questions are the plan's training questions (`--set seen`, the target set: the LM met their facts in
speech, never these voices) or the questions never heard in speech (`--set unseen`: facts only in text).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.corpus import flite, normalize_text
from training.data.spoken_arithmetic import NUMBER_WORDS, question_answer_pairs
from training.evaluate import wer, word_errors
from training.pipeline import PLANS

# Voices no plan's data uses. The default set is flite's (`flite -lv`) awb and rms, a Scottish and a US male
# speaker (the demo plan trains on slt and kal; awb_time speaks only clock times); piper's joe-us is a neural
# voice, a US male (`--voices piper:joe-us`).
HELD_OUT_VOICES = ("flite:awb", "flite:rms")
OTHER_VOICES = ("piper:joe-us",)
UNITS = NUMBER_WORDS + ["nineteen"]  # the task's words stop at its largest sum
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(value: int) -> str:
    """0..99 in words ("forty two"): what a misheard reply's digits can be."""
    if not 0 <= value < 100:
        raise ValueError(f"{value} is outside 0..99")
    if value < 20:
        return UNITS[value]
    tens, unit = divmod(value, 10)
    return TENS[tens - 2] + ("" if unit == 0 else " " + UNITS[unit])


def spoken_form(text: str) -> str:
    """ASR writes "2 + 3 = 5."; the reply's text says "two plus three is five.": digits and signs as words."""
    text = text.replace("+", " plus ").replace("=", " is ")
    return re.sub(r"\d+", lambda m: " " + _said(m.group()) + " ", text)


def _said(digits: str) -> str:
    """A number as words; past 99 (a misheard reply: "840") digit by digit, which cannot match an answer."""
    return number_words(int(digits)) if int(digits) < 100 else " ".join(UNITS[int(d)] for d in digits)


def reply_wer(pairs: list[tuple[str, str]]) -> float:
    """(reply text, ASR transcript) pairs -> word error rate, numbers compared as words."""
    return wer([(reference, spoken_form(heard)) for reference, heard in pairs])


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    voice: str


def questions(plan_name: str, which: str, count: int | None = None, seed: int = 0,
              voices: tuple[str, ...] = HELD_OUT_VOICES) -> list[Question]:
    """The plan's task in held-out voices: every question in every voice, or `count` of them (a seeded pick,
    the voices in turn)."""
    train, unseen = question_answer_pairs(PLANS[plan_name].arithmetic)
    pool = train if which == "seen" else unseen
    if count is None:
        return [Question(*pair, voice) for voice in voices for pair in pool]
    order = np.random.default_rng(seed).permutation(len(pool))[:count]
    return [Question(*pool[i], voices[n % len(voices)]) for n, i in enumerate(order)]


def speak(text: str, voice: str) -> tuple[np.ndarray, int]:
    """A held-out voice by name: "flite:awb", "piper:joe-us"."""
    from training.data.tts import piper

    if voice == "piper:joe-us":
        return piper(text)
    kind, _, name = voice.partition(":")
    if kind != "flite" or not name:
        raise ValueError(f"unknown voice {voice!r}: flite:<name> or piper:joe-us")
    return flite(text, name)


@dataclass
class Reply:
    question: Question
    text: str
    finish_reason: str
    audio: np.ndarray
    heard: str

    @property
    def correct(self) -> bool:
        return normalize_text(self.text) == normalize_text(self.question.answer)


class DemoSystem:
    """The three checkpoints under one directory (the published layout training.tiny writes)."""

    def __init__(self, checkpoints: Path):
        import torch

        from glmvoice.models.llm_checkpoint import load_llm
        from glmvoice.models.speech_decoder import load_speech_decoder
        from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer

        self.speech_tokenizer = load_speech_tokenizer(checkpoints / "glm-4-voice-tokenizer")
        self.model, self.text_tokenizer = load_llm(checkpoints / "glm-4-voice-9b", dtype=torch.float32)
        self.decoder = load_speech_decoder(checkpoints / "glm-4-voice-decoder")

    def reply(self, audio: np.ndarray, rate: int, max_new_tokens: int) -> tuple[str, list[int], str]:
        """(reply text, reply speech codes, finish reason) for one spoken question, greedy."""
        import torch

        from glmvoice.chat_template import Conversation
        from glmvoice.runtime.generate import generate

        tok = self.text_tokenizer
        prompt = Conversation(tok).add_speech(self.speech_tokenizer.tokenize(audio, rate))
        with torch.no_grad():
            result = generate(self.model, prompt, max_new_tokens, stop_ids=tok.stop_ids)
        codes = [i - tok.audio_offset for i in result.ids if tok.is_audio(i)]
        return tok.decode([i for i in result.ids if tok.is_text(i)]), codes, result.finish_reason

    def reply_audio(self, codes: list[int], streaming: bool) -> np.ndarray:
        """The reply's audio: decoded whole, or as the services do, pushed to a decoder stream one speech run
        (the interleaved template's, as the LM emits them) at a time."""
        if not codes:
            return np.zeros(0, np.float32)
        if not streaming:
            return self.decoder.decode(codes)
        from glmvoice.runtime.decoder_stream import DecoderStreams
        from training.data.interleave import SPEECH_RUN

        with DecoderStreams(self.decoder).stream("reply") as stream:
            runs = [stream.push(codes[i:i + SPEECH_RUN]) for i in range(0, len(codes), SPEECH_RUN)]
            return np.concatenate([*runs, stream.finalize()])


def run(checkpoints: Path, plan_name: str, which: str, count: int | None, max_new_tokens: int, out: Path,
        voices: tuple[str, ...] = HELD_OUT_VOICES, streaming: bool = False) -> dict:
    from glmvoice.audio import resample, write_wav
    from training import asr

    system = DemoSystem(checkpoints)
    out.mkdir(parents=True, exist_ok=True)
    replies = []
    for question in questions(plan_name, which, count, voices=voices):
        audio, rate = speak(question.text, question.voice)
        text, codes, reason = system.reply(audio, rate, max_new_tokens)
        speech = system.reply_audio(codes, streaming)
        heard = asr.transcribe(resample(speech, system.decoder.sample_rate, asr.SAMPLE_RATE)) if len(speech) else ""
        replies.append(Reply(question, text, reason, speech, heard))
    samples = []
    for n, reply in enumerate(replies[::max(1, len(replies) // 3)][:3]):  # spread over the voices
        path = out / f"reply_{n}.wav"
        write_wav(path, reply.audio, system.decoder.sample_rate)
        samples.append({"question": reply.question.text, "voice": reply.question.voice, "reply": reply.text,
                        "heard": reply.heard, "wav": str(path)})
    per_reply = [word_errors(r.text, spoken_form(r.heard)) for r in replies]
    metrics = {
        "checkpoints": str(checkpoints), "plan": plan_name, "questions": which, "count": len(replies),
        "voices": list(voices), "decode": "streaming" if streaming else "offline",
        "accuracy": sum(r.correct for r in replies) / len(replies),
        "accuracy_by_voice": {v: _share([r.correct for r in replies if r.question.voice == v]) for v in voices},
        "reply_wer": reply_wer([(r.text, r.heard) for r in replies]),
        "replies_under_20pct_wer": sum(e <= 0.2 * max(1, n) for e, n in per_reply) / len(replies),
        "stop_share": sum(r.finish_reason == "stop" for r in replies) / len(replies),
        "samples": samples,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def hear(demo_dir: Path) -> dict:
    """What whisper hears in a `services.demo` reply (demo_dir/reply.wav) against its text (transcript.json)."""
    from glmvoice.audio import read_wav, resample
    from training import asr

    result = json.loads((demo_dir / "transcript.json").read_text())
    audio, rate = read_wav(demo_dir / "reply.wav")
    heard = asr.transcribe(resample(audio, rate, asr.SAMPLE_RATE)) if len(audio) else ""
    return {"reply": result["text"], "heard": heard, "wer": reply_wer([(result["text"], heard)])}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=Path("training/checkpoints/demo"))
    parser.add_argument("--plan", default="demo", choices=sorted(PLANS), help="the plan the checkpoints were trained on")
    parser.add_argument("--set", dest="which", choices=("seen", "unseen"), default="seen")
    parser.add_argument("--count", type=int, default=None,
                        help="a seeded pick of this many questions (default: every question in each voice)")
    parser.add_argument("--voices", default=",".join(HELD_OUT_VOICES),
                        help=f"held-out voices, comma-separated (also: {', '.join(OTHER_VOICES)})")
    parser.add_argument("--streaming", action="store_true",
                        help="decode the reply in blocks as the services do (default: whole, offline)")
    parser.add_argument("--max-new-tokens", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("build/demo-eval"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--say", metavar="TEXT", help="only speak TEXT in the one voice --voices names into --wav")
    parser.add_argument("--wav", type=Path, default=Path("build/demo/question.wav"), help="where --say writes")
    parser.add_argument("--hear", type=Path, metavar="DEMO_DIR",
                        help="only transcribe the reply `services.demo` wrote there (reply.wav, transcript.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.say:
        from glmvoice.audio import write_wav

        if "," in args.voices:
            parser.error(f"--say speaks in one voice; --voices names {args.voices!r}")
        args.wav.parent.mkdir(parents=True, exist_ok=True)
        write_wav(args.wav, *speak(args.say, args.voices))
        print(f"demo: {args.voices} says {args.say!r} into {args.wav}")
        return 0
    if args.hear:
        heard = hear(args.hear)
        print(f"demo: whisper-base hears the reply as {heard['heard']!r} (WER {heard['wer']:.0%} against its text)")
        return 0
    m = run(args.checkpoints, args.plan, args.which, args.count, args.max_new_tokens, args.out,
            tuple(args.voices.split(",")), args.streaming)
    print(f"{m['count']} {m['questions']} questions in {', '.join(m['voices'])}")
    print(f"accuracy (reply text is the answer)       {m['accuracy']:.1%}  "
          + ", ".join(f"{v} {a:.1%}" for v, a in m["accuracy_by_voice"].items() if a is not None))
    print(f"reply WER (whisper-base vs reply text)    {m['reply_wer']:.1%}")
    print(f"replies with WER <= 20%                   {m['replies_under_20pct_wer']:.1%}")
    print(f"replies ended on the model's stop         {m['stop_share']:.1%}")
    for s in m["samples"]:
        print(f"  {s['voice']:<11} asked {s['question']!r}: replied {s['reply']!r}, heard {s['heard']!r}")
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
