"""Evaluation of checkpoints on held-out data, and the eval gate (thresholds in training/eval_gate.yaml).

- speech tokenizer: ASR WER of its codes read back by the training ASR head (held-out English sentences in
  every voice plus a LibriVox clip; held-out arithmetic questions and Mandarin pinyin separately), and
  codebook usage.
- speech decoder: mel L1 of codes -> flow mel against the recording (held-out sentences, decoder voice), and
  of the vocoder (recording's mel -> HiFT -> mel);
  with `asr`, reconstruction WER: audio -> our tokenizer -> decoder -> faster-whisper, against the text.
- LM: held-out loss and task accuracy (the greedy answer's text equals the expected answer, normalised) on
  the training questions spoken in a voice never heard in training (understanding new speech), and the
  same two on questions never heard in training (`*_unseen_questions`: their facts were only ever text, in
  pre-training, so this measures text knowledge carried over to speech); style control: the same spoken
  questions after "slow" and after "fast" instructions, speech tokens emitted slow / fast
  (`style_rate_contrast`, against `style_rate_contrast_data`, the ratio the data teaches).
Every run writes metrics.json (glmvoice.provenance) into the checkpoint, with the gate's verdict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from glmvoice.provenance import read_provenance, write_metrics
from training.data import style as style_data
from training.data.corpus import MANDARIN_VOICE, normalize_text
from training.pipeline import PLANS, Plan, codes_of, decoder_items, lm_pairs, speech_data

GATE_FILE = Path(__file__).with_name("eval_gate.yaml")


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) after normalize_text."""
    ref, hyp = normalize_text(reference).split(), normalize_text(hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def wer(pairs: list[tuple[str, str]]) -> float:
    errors = [word_errors(r, h) for r, h in pairs]
    return sum(e for e, _ in errors) / max(1, sum(n for _, n in errors))


def is_mandarin(utterance) -> bool:
    return utterance.source.startswith(f"espeak:{MANDARIN_VOICE.name}:")


def evaluate_speech_tokenizer(directory: Path, plan: Plan) -> dict:
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer
    from training.train_tokenizer import load_head, transcribe_codes

    tokenizer, head = load_speech_tokenizer(directory), load_head(directory)
    data = speech_data(plan)
    used: set[int] = set()

    def score(items) -> float:
        pairs = []
        for text, audio, rate in items:
            codes = tokenizer.tokenize(audio, rate)
            used.update(codes)
            pairs.append((text, transcribe_codes(tokenizer.model, head, codes)))
        return wer(pairs)

    english = [u for u in data.english_held if not is_mandarin(u)]
    mandarin = [u for u in data.english_held if is_mandarin(u)]
    metrics = {
        "asr_wer": score([(u.text, u.audio, u.sample_rate) for u in english]),
        "asr_wer_arithmetic": score([(e.question, e.audio, e.sample_rate) for e in data.arithmetic_held]),
    }
    if mandarin:  # toneless pinyin syllables as words
        metrics["asr_wer_mandarin"] = score([(u.text, u.audio, u.sample_rate) for u in mandarin])
    metrics["codebook_usage"] = len(used) / tokenizer.config.quantize_vocab_size
    return metrics


def evaluate_speech_decoder(directory: Path, plan: Plan, tokenizer_dir: Path, asr: bool) -> dict:
    from glmvoice.audio import resample
    from glmvoice.models.speech_decoder import load_speech_decoder
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer
    from training.train_decoder import mel_loss, vocoder_mel_loss

    decoder, tokenizer = load_speech_decoder(directory), load_speech_tokenizer(tokenizer_dir)
    items = decoder_items(decoder, tokenizer, plan, held_out=True)
    metrics = {"mel_l1": mel_loss(decoder, items), "vocoder_mel_l1": vocoder_mel_loss(decoder, items)}
    if asr:
        from training import asr as whisper

        whisper.ensure_installed()
        pairs = []
        for u in [u for u in speech_data(plan).english_held if not is_mandarin(u)]:
            audio = decoder.decode(tokenizer.tokenize(u.audio, u.sample_rate))
            pairs.append((u.text, whisper.transcribe(resample(audio, decoder.sample_rate, whisper.SAMPLE_RATE))))
        metrics["reconstruction_wer"] = wer(pairs)
        metrics["reconstruction_samples"] = [{"reference": r, "heard": h} for r, h in pairs[:4]]
    return metrics


@torch.no_grad()
def evaluate_llm(directory: Path, plan: Plan, tokenizer_dir: Path) -> dict:
    from glmvoice.models.llm_checkpoint import load_llm
    from glmvoice.runtime.generate import generate
    from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer
    from training.train_llm import batch_tensors, lm_loss

    model, text_tokenizer = load_llm(directory, dtype=torch.float32)
    speech_tokenizer = load_speech_tokenizer(tokenizer_dir)
    data = speech_data(plan)
    metrics, samples = {}, []
    for name, examples in (("", data.arithmetic_new_voice), ("_unseen_questions", data.arithmetic_held)):
        pairs = lm_pairs(text_tokenizer, speech_tokenizer, examples)
        losses = [lm_loss(model, *batch_tensors(pairs[i: i + 16])).item() for i in range(0, len(pairs), 16)]
        correct = 0
        for example, (prompt, completion) in zip(examples, pairs):
            result = generate(model, prompt, len(completion) + 16, stop_ids=text_tokenizer.stop_ids)
            text = text_tokenizer.decode([i for i in result.ids if text_tokenizer.is_text(i)])
            ok = normalize_text(text) == normalize_text(example.answer)
            correct += ok
            if len(samples) < 3 or (name and len(samples) < 6):
                samples.append({"question": example.question, "answer": text, "correct": bool(ok),
                                "speech_tokens": sum(text_tokenizer.is_audio(i) for i in result.ids)})
        metrics |= {f"held_out_loss{name}": float(np.mean(losses)), f"task_accuracy{name}": correct / len(examples),
                    f"questions{name}": len(examples)}
    return metrics | style_rate_metrics(model, text_tokenizer, speech_tokenizer, plan) | {"samples": samples}


STYLE_QUESTIONS = 12


def style_rate_metrics(model, text_tokenizer, speech_tokenizer, plan: Plan) -> dict:
    """Speech tokens the LM emits for the same unseen-voice questions after the slow vs the fast instruction."""
    from glmvoice.chat_template import Conversation
    from glmvoice.runtime.generate import generate

    styles = {style.name: style for style in plan.style.styles}
    if not {"slow", "fast"} <= styles.keys():
        return {}
    data = speech_data(plan)
    examples = data.arithmetic_new_voice[:STYLE_QUESTIONS]
    codes = codes_of(speech_tokenizer, [(ex.audio, ex.sample_rate) for ex in examples])
    counts = {}
    for name in ("slow", "fast"):
        counts[name] = []
        for question in codes:
            prompt = Conversation(text_tokenizer).add_speech(question, styles[name].instruction)
            result = generate(model, prompt, 400, stop_ids=text_tokenizer.stop_ids)
            counts[name].append(sum(text_tokenizer.is_audio(i) for i in result.ids))
    return {"style_rate_contrast": style_data.rate_contrast(counts["slow"], counts["fast"]),
            "style_rate_contrast_data": style_data.ground_truth_rate_ratio(data.styled_train)}


def gate(network: str, preset: str, metrics: dict, gate_file: Path = GATE_FILE) -> tuple[bool, list[str], dict]:
    """(passed, reasons it failed, the thresholds applied)."""
    table = yaml.safe_load(Path(gate_file).read_text())
    thresholds = table.get(network, {}).get(preset)
    if thresholds is None:
        return False, [f"no thresholds for {network}/{preset} in {gate_file}"], {}
    failed = [f"{name} not measured" for name in thresholds.get("required", []) if name not in metrics]
    for key, bound in thresholds.items():
        if key == "required":
            continue
        kind, name = key.split("_", 1)
        if name not in metrics:
            continue
        value = metrics[name]
        if (kind == "max" and value > bound) or (kind == "min" and value < bound):
            failed.append(f"{name} {value:.4g} {'>' if kind == 'max' else '<'} {bound}")
    return not failed, failed, thresholds


def evaluate_checkpoint(network: str, directory: str | Path, plan: str | Plan = "tiny", tokenizer_dir: str | Path | None = None,
                        asr: bool = False, out: str | Path | None = None, gate_file: Path = GATE_FILE) -> dict:
    """Measures on the held-out data of `plan` (a name in PLANS or a Plan), gates, and writes metrics.json into
    the checkpoint (and into `out` when given)."""
    directory = Path(directory)
    plan = PLANS[plan] if isinstance(plan, str) else plan
    provenance = read_provenance(directory)
    if provenance.network != network:
        raise ValueError(f"{directory} holds a {provenance.network} checkpoint, not {network}")
    if network == "speech_tokenizer":
        metrics = evaluate_speech_tokenizer(directory, plan)
    else:
        if tokenizer_dir is None:
            raise ValueError(f"evaluating {network} needs the speech tokenizer directory its codes come from")
        if network == "speech_decoder":
            metrics = evaluate_speech_decoder(directory, plan, Path(tokenizer_dir), asr)
        else:
            metrics = evaluate_llm(directory, plan, Path(tokenizer_dir))
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    passed, failed, thresholds = gate(network, provenance.preset, numbers, gate_file)
    for target in {directory, *([Path(out)] if out else [])}:
        write_metrics(target, network, metrics, passed, failed, thresholds)
    return {**metrics, "gate": passed, "failed": failed}
