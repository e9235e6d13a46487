"""Training one network into a checkpoint directory in its published layout, with provenance and loss curves.

Used by `python -m training.tiny` (all three, in order) and by the Kubernetes Job entry point
`training.jobs.train` (one). The tokenizer comes first: the LM's speech prompts and answers and the decoder's
inputs are codes of a trained speech tokenizer, whose directory the other two take as an argument.

A run skips its work when the directory already holds a checkpoint whose provenance matches what the run
would make (same network, preset, data recipe hash, parent, seed and steps). The resumable trainer state
lives beside the checkpoint (`.<name>.work/<recipe key>/`), never inside it, so the directory stays servable.
`device` moves the networks (and every batch) to e.g. "cuda"; random draws stay on torch's CPU generator, so
resumption is exact on CPU and follows the same draws elsewhere.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from glmvoice.provenance import Provenance, file_sha256, new_provenance, read_provenance, write_provenance
from training.data import corpus, spoken_arithmetic
from training.data import style as style_data
from training.data.corpus import Utterance
from training.data.tts import Voice
from training.loop import save_loss_plot
from training.train_decoder import DecoderTrainConfig
from training.train_llm import LMTrainConfig
from training.train_tokenizer import TokenizerTrainConfig

LOSS_PLOT = "loss.png"
RECIPE_NAME = "data_recipe.json"  # the full plan behind data_recipe_hash, and the tokenizer the codes came from


@dataclass(frozen=True)
class Plan:
    """Everything that fixes a run's result: data recipes, steps, seed."""

    seed: int = 0
    corpus: corpus.Recipe = corpus.Recipe()
    arithmetic: spoken_arithmetic.Recipe = spoken_arithmetic.Recipe()
    style: style_data.Recipe = style_data.Recipe()
    tokenizer: TokenizerTrainConfig = TokenizerTrainConfig(steps=300)
    decoder: DecoderTrainConfig = DecoderTrainConfig(flow_steps=300, hift_steps=300)
    # The LM: continued pre-training on interleaved speech-text data (training.data.interleave), then
    # fine-tuning on spoken dialogues. steps=0 skips pre-training.
    # 1200 steps: every held-out fact recalled from text afterwards (600: 8-11 of 15).
    lm_pretrain: LMTrainConfig = LMTrainConfig(steps=1200, batch_size=16)
    lm_pretrain_documents: int = 400
    # Copies of each arithmetic fact in the pre-training text: a real LM's text corpus states such facts
    # many times; once each, the tiny LM does not learn its additions (held-out accuracy 13 %, 600 steps).
    lm_fact_repeats: int = 8
    # A third of pre-training's rate: fine-tuning at 3e-3 overwrote the facts only text had taught
    # (held-out questions 24 % vs 51 % at 1e-3, one seed).
    lm: LMTrainConfig = LMTrainConfig(steps=500, batch_size=12, lr=1e-3)
    # Fine-tuning also hears each training question sped up or slowed down by these factors
    # (spoken_arithmetic.speed_perturbed): more speakers for the LM than the synthesizers have. The LM's alone:
    # the tokenizer's codebook, and so the decoder, stay as they are.
    lm_question_speeds: tuple[float, ...] = ()
    # The decoder learns English sentences in its voice besides the answers; False: the answers only (a
    # closed-domain decoder, as the demo's, spends all its steps on the words it will have to say).
    decoder_sentences: bool = True
    # Network presets; the tokenizer's encoder starts from whisper-base's (training.whisper_init) when
    # tokenizer_init says so, else from random weights.
    tokenizer_preset: str = "tiny"
    tokenizer_init: str | None = None
    decoder_preset: str = "tiny"
    # The dtype flow.pt / hift.pt are written in (float32 as published; the demo's float16 keeps the committed
    # checkpoints under 20 MB).
    decoder_dtype: str = "float32"

    def preset(self, network: str) -> str:
        return {"speech_tokenizer": self.tokenizer_preset, "speech_decoder": self.decoder_preset}.get(network, "tiny")

    def data_hash(self) -> str:
        return hashlib.sha256((self.corpus.hash() + self.arithmetic.hash() + self.style.hash()).encode()).hexdigest()[:16]


# The Plan fields only one network's training reads: a change to them leaves the other checkpoints current.
OWN_FIELDS = {
    "speech_tokenizer": ("tokenizer", "tokenizer_preset", "tokenizer_init"),
    "speech_decoder": ("decoder", "decoder_preset", "decoder_dtype", "decoder_sentences"),
    "llm": ("lm_pretrain", "lm_pretrain_documents", "lm_fact_repeats", "lm", "lm_question_speeds"),
}

# The first is the assistant's (and decoder's) voice, as in the default recipe.
DEMO_QUESTION_VOICES = spoken_arithmetic.Recipe().voices + (
    Voice("en-us+m3", 140), Voice("en-us+f2", 165, pitch=60), Voice("en-gb-x-rp+m5", 150),
    Voice("en-us+klatt3", 155), Voice("en-029+f4", 145))
DEMO_FLITE_VOICES = ("slt", "kal")  # flite's awb and rms stay unheard: training.demo_eval asks with them

PLANS = {
    # `make tiny`: ~8-12 minutes on two CPU cores.
    "tiny": Plan(),
    # `make train-tiny`: trained longer, with flite voices and Mandarin speech for the tokenizer (tens of minutes).
    "train-tiny": Plan(
        corpus=corpus.Recipe(flite_voices=("slt", "kal"), mandarin=True),
        tokenizer=TokenizerTrainConfig(steps=3000),
        decoder=DecoderTrainConfig(flow_steps=3000, hift_steps=4000),
        lm_pretrain=LMTrainConfig(steps=3000, batch_size=16),
        lm_pretrain_documents=2000,
        lm=LMTrainConfig(steps=3000, lr=1e-3),
    ),
    # `make train-demo`: the committed demo checkpoints (training/checkpoints/demo). Questions in eight espeak-ng
    # speakers (variants and accents) and two of flite's voices, so that voices never heard in training
    # (flite's awb and rms, which training.demo_eval asks with) are understood: with espeak-ng alone the
    # tokenizer's codes for any flite voice were garbage (its CTC head heard "htoo plus toxo is thre" for "what
    # is two plus three"). The LM also hears every question at four speeds: held-out accuracy on all 170 questions
    # in awb and rms 71 % -> 92 % (docs/training.md). Replies in one voice, from a decoder trained on the answers
    # alone, without the adversarial phase (its cost buys no intelligibility at this size).
    "demo": Plan(
        corpus=corpus.Recipe(voices=corpus.Recipe().voices + (Voice("en-us+f2", 165, pitch=60), Voice("en-us+m3", 140)),
                             flite_voices=DEMO_FLITE_VOICES),
        arithmetic=spoken_arithmetic.Recipe(voices=DEMO_QUESTION_VOICES, flite_voices=DEMO_FLITE_VOICES,
                                            answer_voice="slt"),
        tokenizer=TokenizerTrainConfig(steps=300, train_layers=0),
        tokenizer_preset="whisper-base",
        tokenizer_init="whisper-base",
        decoder=DecoderTrainConfig(flow_steps=4000, hift_steps=4000, adversarial_start=4000),
        decoder_preset="demo",
        decoder_dtype="float16",
        lm_pretrain=LMTrainConfig(steps=600, batch_size=16),
        lm=LMTrainConfig(steps=2000, batch_size=12, lr=1e-3),
        lm_question_speeds=(0.85, 0.92, 1.08, 1.15),
        decoder_sentences=False,
    ),
}


@dataclass
class SpeechData:
    english_train: list[Utterance]
    english_held: list[Utterance]
    arithmetic_train: list[spoken_arithmetic.Example]
    arithmetic_held: list[spoken_arithmetic.Example]  # unseen questions
    arithmetic_new_voice: list[spoken_arithmetic.Example]  # training questions in unseen voices
    styled_train: list[style_data.StyledExample]  # each training question style.rounds times, with an instruction
    decoder_voice: str = field(default="")  # Utterance.source of the one voice the decoder speaks in


@functools.lru_cache(maxsize=2)
def speech_data(plan: Plan) -> SpeechData:
    english_train, english_held = corpus.english_corpus(plan.corpus)
    train_qa, held_qa = spoken_arithmetic.question_answer_pairs(plan.arithmetic)
    decoder_voice = spoken_arithmetic.answer_source(plan.arithmetic)
    if decoder_voice not in (corpus.utterance_source(plan.corpus.voices[0]), *(f"flite:{v}" for v in plan.corpus.flite_voices)):
        raise ValueError(f"the corpus does not speak in the answers' voice {decoder_voice} (the decoder's)")
    return SpeechData(english_train, english_held, spoken_arithmetic.synthesize(train_qa, plan.arithmetic),
                      spoken_arithmetic.synthesize(held_qa, plan.arithmetic),
                      spoken_arithmetic.synthesize(train_qa, plan.arithmetic, plan.arithmetic.held_out_voices),
                      style_data.styled_examples(train_qa, plan.style, plan.arithmetic), decoder_voice)


def unique_answers(examples: list[spoken_arithmetic.Example]) -> list[Utterance]:
    seen: dict[str, Utterance] = {}
    for ex in examples:
        seen.setdefault(ex.answer, Utterance(ex.answer, ex.answer_audio, ex.answer_sample_rate, "arithmetic:answer"))
    return list(seen.values())


def work_dir(out: Path, expected: Provenance, plan: Plan) -> Path:
    """Resumable trainer state of this exact run: keyed by the recipe and the plan's hyperparameters, so a
    changed plan never resumes an old state."""
    recipe = {k: v for k, v in asdict(expected).items() if k not in ("created_at", "code_version")}
    doc = json.dumps({"recipe": recipe, "plan": _plan_json(plan, expected.network)}, sort_keys=True)
    key = hashlib.sha256(doc.encode()).hexdigest()[:12]
    return out.parent / f".{out.name}.work" / key


WEIGHTS = {"speech_tokenizer": "model.safetensors", "speech_decoder": "flow.pt", "llm": "config.json"}


def expected_provenance(network: str, preset: str, plan: Plan, tokenizer_dir: Path | None = None,
                        parent: str | Path | None = None) -> Provenance:
    """The provenance a run would write (its created_at and code_version are now's)."""
    if network == "speech_tokenizer":
        return new_provenance(network, preset, plan.data_hash(), parent, plan.seed, plan.tokenizer.steps)
    steps = plan.lm_pretrain.steps + plan.lm.steps if network == "llm" else plan.decoder.flow_steps + plan.decoder.hift_steps
    return new_provenance(network, preset, _dependency_hash(plan, Path(tokenizer_dir)), parent, plan.seed, steps)


def up_to_date(network: str, out: str | Path, preset: str, plan: Plan, tokenizer_dir: Path | None = None,
               parent: str | Path | None = None) -> bool:
    """Whether `out` already holds what this run would train (so the run can be skipped)."""
    out = Path(out)
    try:
        recorded = _what_network_reads(json.loads((out / RECIPE_NAME).read_text())["plan"], network)
        return (out / WEIGHTS[network]).exists() and recorded == _plan_json(plan, network) and read_provenance(out).same_recipe(
            expected_provenance(network, preset, plan, tokenizer_dir, parent))
    except (FileNotFoundError, ValueError, KeyError):
        return False


def _plan_json(plan: Plan, network: str | None = None) -> dict:
    """The plan as data_recipe.json stores it (hyperparameters included: provenance alone does not name them);
    with `network`, only what that network's training reads."""
    doc = json.loads(json.dumps(asdict(plan), default=str))
    return doc if network is None else _what_network_reads(doc, network)


def _what_network_reads(plan_doc: dict, network: str) -> dict:
    """A stored plan less the fields of the other networks: a new LM step count leaves the decoder current."""
    others = {name for other, names in OWN_FIELDS.items() if other != network for name in names}
    return {k: v for k, v in plan_doc.items() if k not in others}


def _dependency_hash(plan: Plan, tokenizer_dir: Path) -> str:
    """Data of the LM and decoder: the plan's recipes and the exact tokenizer weights their codes come from."""
    weights = file_sha256(tokenizer_dir / WEIGHTS["speech_tokenizer"])
    return hashlib.sha256(f"{plan.data_hash()}:{weights}".encode()).hexdigest()[:16]


def _finish(out: Path, provenance: Provenance, history: dict[str, list[float]], title: str, plan: Plan,
            tokenizer_dir: Path | None = None) -> Path:
    save_loss_plot(history, out / LOSS_PLOT, title)
    # Relative to the checkpoint, so a tree of checkpoints can move as a whole.
    tokenizer = None if tokenizer_dir is None else os.path.relpath(tokenizer_dir.resolve(), out.resolve())
    recipe = {"plan": _plan_json(plan), "speech_tokenizer": tokenizer}
    (out / RECIPE_NAME).write_text(json.dumps(recipe, indent=2) + "\n")
    write_provenance(out, provenance)
    return out


def train_speech_tokenizer(out: str | Path, preset: str, plan: Plan, parent: str | Path | None = None,
                           device: str = "cpu") -> Path:
    from glmvoice.models.speech_tokenizer import SpeechTokenizerConfig, SpeechTokenizerModel
    from glmvoice.models.speech_tokenizer_checkpoint import load_speech_tokenizer_model, save_speech_tokenizer
    from glmvoice.runtime.tokenizer_stream import SpeechTokenizer
    from training import train_tokenizer as tt

    out = Path(out)
    if up_to_date("speech_tokenizer", out, preset, plan, None, parent):
        return out
    expected = expected_provenance("speech_tokenizer", preset, plan, None, parent)
    torch.manual_seed(plan.seed)
    if parent is None and plan.tokenizer_init is not None:
        model = _pretrained_tokenizer(plan.tokenizer_init, preset, plan.seed)
        head = tt.CTCHead(tt.HeadConfig(model.config.d_model))
    elif parent is None:
        model = SpeechTokenizerModel(SpeechTokenizerConfig.from_name(preset))
        model.init_random_weights(torch.Generator().manual_seed(plan.seed))
        for module in model.modules():  # trainable layers at torch's default scale; positions and codebook as published
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
                module.reset_parameters()
        head = tt.CTCHead(tt.HeadConfig(model.config.d_model))
    else:
        model = load_speech_tokenizer_model(parent)
        head = tt.load_head(parent) if (Path(parent) / tt.HEAD_NAME).exists() else tt.CTCHead(tt.HeadConfig(model.config.d_model))
    tt.prepare_model(model, fresh=parent is None, train_layers=plan.tokenizer.train_layers)
    data = speech_data(plan)
    utterances = data.english_train + [Utterance(ex.question, ex.audio, ex.sample_rate, "arithmetic:question")
                                       for ex in data.arithmetic_train] + unique_answers(data.arithmetic_train)
    features = tt.features(SpeechTokenizer(model), utterances)
    config = TokenizerTrainConfig(**{**asdict(plan.tokenizer), "seed": plan.seed})
    history = tt.train_tokenizer(model.to(device), head.to(device), features, config, work_dir(out, expected, plan))
    save_speech_tokenizer(model, out)
    tt.save_head(head, out)
    return _finish(out, expected, {k: v for k, v in history.items() if k in ("ctc", "commitment")}, "speech tokenizer", plan)


def _pretrained_tokenizer(source: str, preset: str, seed: int):
    from training import asr
    from training.whisper_init import whisper_initialised

    if source != "whisper-base":
        raise ValueError(f"tokenizer_init {source!r}: only whisper-base (training.asr's pinned weights) is known")
    return whisper_initialised(asr.model_dir() / "model.bin", preset, seed)


def train_speech_decoder(out: str | Path, preset: str, plan: Plan, tokenizer_dir: str | Path,
                         parent: str | Path | None = None, device: str = "cpu") -> Path:
    from glmvoice.models.speech_decoder import (
        DecoderConfig,
        build_speech_decoder,
        load_speech_decoder,
        save_speech_decoder,
    )
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer
    from training import train_decoder as td

    out, tokenizer_dir = Path(out), Path(tokenizer_dir)
    if up_to_date("speech_decoder", out, preset, plan, tokenizer_dir, parent):
        return out
    expected = expected_provenance("speech_decoder", preset, plan, tokenizer_dir, parent)
    tokenizer = load_speech_tokenizer(tokenizer_dir)
    decoder = build_speech_decoder(DecoderConfig.from_name(preset), plan.seed) if parent is None else load_speech_decoder(parent)
    if decoder.codebook_size != tokenizer.config.quantize_vocab_size:
        raise ValueError(f"decoder codebook {decoder.codebook_size} != tokenizer codebook {tokenizer.config.quantize_vocab_size}")
    items = decoder_items(decoder, tokenizer, plan, held_out=False)
    if parent is None:
        td.init_f0_bias(decoder, items)
    config = DecoderTrainConfig(**{**asdict(plan.decoder), "seed": plan.seed})
    decoder.flow.to(device)
    decoder.hift.to(device)
    history = td.train_decoder(decoder, items, config, work_dir(out, expected, plan))
    save_speech_decoder(decoder, out, getattr(torch, plan.decoder_dtype))
    return _finish(out, expected, history, "speech decoder", plan, tokenizer_dir)


def recorded_tokenizer(checkpoint: str | Path) -> Path | None:
    """The speech tokenizer a trained LM / decoder checkpoint learned its codes from (its data_recipe.json)."""
    path = Path(checkpoint) / RECIPE_NAME
    if not path.exists():
        return None
    value = json.loads(path.read_text()).get("speech_tokenizer")
    return None if value is None else (Path(checkpoint) / value).resolve()


def decoder_items(decoder, tokenizer, plan: Plan, held_out: bool) -> list:
    """Decoder training (or held-out) items in its one voice: English sentences and arithmetic answers."""
    from training.train_decoder import decoder_item

    data = speech_data(plan)
    english = data.english_held if held_out else data.english_train
    utterances = [u for u in english if u.source == data.decoder_voice and (held_out or plan.decoder_sentences)]
    if not held_out:
        utterances += unique_answers(data.arithmetic_train)
    codes = codes_of(tokenizer, recordings(utterances))
    return [decoder_item(decoder, c, u.audio, u.sample_rate) for c, u in zip(codes, utterances)]


def codes_of(speech_tokenizer, clips: list[tuple[np.ndarray, int]]) -> list[list[int]]:
    """Speech codes of each (audio, sample rate) clip, batched per sample rate: the one way training
    tokenizes recordings (sources mix rates: espeak 22.05 kHz, LibriVox 16 kHz)."""
    codes: list[list[int] | None] = [None] * len(clips)
    for rate in sorted({r for _, r in clips}):
        indices = [i for i, (_, r) in enumerate(clips) if r == rate]
        for i, c in zip(indices, speech_tokenizer.tokenize_batch([clips[i][0] for i in indices], rate)):
            codes[i] = c
    return codes


def recordings(utterances: list[Utterance]) -> list[tuple[np.ndarray, int]]:
    return [(u.audio, u.sample_rate) for u in utterances]


def all_answers(plan: Plan) -> list[str]:
    """The text of every arithmetic fact, held-out questions' included: the LM's text knowledge."""
    train, held = spoken_arithmetic.question_answer_pairs(plan.arithmetic)
    return [answer for _, answer in train + held]


def pretraining_corpus(text_tokenizer, speech_tokenizer, plan: Plan) -> list[list[int]]:
    """The LM's continued pre-training sequences: text, ASR/TTS pairs and interleaved documents made of the
    training speech (English sentences, training questions and answers) and every arithmetic fact as text."""
    from training.data.interleave import Spoken, pretraining_sequences

    data = speech_data(plan)
    questions = [Utterance(ex.question, ex.audio, ex.sample_rate, "arithmetic:question") for ex in data.arithmetic_train]
    utterances = data.english_train + questions + unique_answers(data.arithmetic_train)
    spoken = [Spoken(u.text, c) for u, c in zip(utterances, codes_of(speech_tokenizer, recordings(utterances)))]
    texts = all_answers(plan) * plan.lm_fact_repeats + sorted({u.text for u in data.english_train})
    return pretraining_sequences(text_tokenizer, spoken, texts, plan.seed, plan.lm_pretrain_documents)


def fine_tuning_pairs(text_tokenizer, speech_tokenizer, plan: Plan) -> list[tuple[list[int], list[int]]]:
    """Spoken dialogues (plain and style-instructed) plus every arithmetic fact as text once: replaying the
    text knowledge keeps fine-tuning from overwriting it (held-out accuracy 0 % without it)."""
    from training.train_llm import whole_sequences

    data = speech_data(plan)
    styled = data.styled_train
    styled_pairs = style_data.styled_dialogue_pairs(
        text_tokenizer, styled, codes_of(speech_tokenizer, [(ex.audio, ex.sample_rate) for ex in styled]),
        codes_of(speech_tokenizer, [(ex.answer_audio, ex.answer_sample_rate) for ex in styled]))
    facts = whole_sequences([text_tokenizer.encode(answer) for answer in all_answers(plan)])
    perturbed = spoken_arithmetic.speed_perturbed(data.arithmetic_train, plan.lm_question_speeds)
    return (lm_pairs(text_tokenizer, speech_tokenizer, data.arithmetic_train) + styled_pairs + facts
            + (lm_pairs(text_tokenizer, speech_tokenizer, perturbed) if perturbed else []))


def lm_pairs(text_tokenizer, speech_tokenizer, examples: list[spoken_arithmetic.Example]) -> list[tuple[list[int], list[int]]]:
    questions = codes_of(speech_tokenizer, [(ex.audio, ex.sample_rate) for ex in examples])
    answers = unique_answers(examples)
    answer_codes = dict(zip([a.text for a in answers], codes_of(speech_tokenizer, recordings(answers))))
    return spoken_arithmetic.dialogue_pairs(text_tokenizer, examples, questions, answer_codes)


def train_llm(out: str | Path, preset: str, plan: Plan, tokenizer_dir: str | Path, parent: str | Path | None = None,
              device: str = "cpu") -> Path:
    from glmvoice.models.llm import GLMConfig, Transformer, pad_vocab
    from glmvoice.models.llm_checkpoint import load_llm, save_llm
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer
    from training import train_llm as tl
    from training.bpe_tokenizer import build_text_tokenizer

    out, tokenizer_dir = Path(out), Path(tokenizer_dir)
    if up_to_date("llm", out, preset, plan, tokenizer_dir, parent):
        return out
    expected = expected_provenance("llm", preset, plan, tokenizer_dir, parent)
    speech_tokenizer = load_speech_tokenizer(tokenizer_dir)
    codebook = speech_tokenizer.config.quantize_vocab_size
    if parent is None:
        if preset != "tiny":
            raise ValueError(f"preset {preset!r} is not trained from scratch here: pass --parent (a glm-4-voice-9b directory)")
        texts = all_answers(plan) + [u.text for u in speech_data(plan).english_train]
        text_tokenizer = build_text_tokenizer(out, texts, codebook)
        model = Transformer(GLMConfig.from_name(preset, vocab_size=pad_vocab(text_tokenizer.vocab_size)))
        init_lm(model, plan.seed)
    else:
        model, text_tokenizer = load_llm(parent, dtype=torch.float32)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.model", "tokenizer_config.json"):
            shutil.copy2(Path(parent) / name, out / name)
    if text_tokenizer.audio_codebook_size != codebook:
        raise ValueError(f"LM has {text_tokenizer.audio_codebook_size} speech tokens, the tokenizer {codebook} codes")
    model.to(device)
    history = {}
    if plan.lm_pretrain.steps:
        sequences = pretraining_corpus(text_tokenizer, speech_tokenizer, plan)
        config = LMTrainConfig(**{**asdict(plan.lm_pretrain), "seed": plan.seed})
        history["pretrain"] = tl.train_lm(model, tl.whole_sequences(sequences), config, work_dir(out, expected, plan) / "pretrain",
                                          desc="pre-train lm")
    pairs = fine_tuning_pairs(text_tokenizer, speech_tokenizer, plan)
    config = LMTrainConfig(**{**asdict(plan.lm), "seed": plan.seed})
    history["lm"] = tl.train_lm(model, pairs, config, work_dir(out, expected, plan) / "finetune")
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    save_llm(model, out, max_shard_bytes=total // 3 + 1, tokenizer=text_tokenizer)  # several shards, as published
    return _finish(out, expected, history, "LM: pre-training, then fine-tuning", plan, tokenizer_dir)


def init_lm(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """GPT-style init: weights N(0, std), norms one."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(std * torch.randn(param.shape, generator=generator))
