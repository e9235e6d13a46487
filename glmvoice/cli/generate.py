"""`glmvoice generate`: run the LM on ids, text or audio; print the generated ids, text and speech codes."""

from __future__ import annotations

import argparse
import json

from glmvoice.sampling import OFFICIAL_SAMPLING  # torch-free: building the parser loads no model code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="LM directory in the glm-4-voice-9b layout")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input-ids", help="comma-separated prompt ids, used as they are (no template)")
    source.add_argument("--text", help="a text instruction, put into the chat template")
    source.add_argument("--audio", help="a WAV file: a speech instruction, tokenized with --tokenizer")
    parser.add_argument("--tokenizer", help="speech tokenizer directory (glm-4-voice-tokenizer layout), for --audio")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=OFFICIAL_SAMPLING["temperature"], help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=OFFICIAL_SAMPLING["top_p"])
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu")


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"--input-ids must be comma-separated integers: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    import torch

    from glmvoice.chat_template import Conversation, OutputRouter
    from glmvoice.models.llm_checkpoint import load_llm
    from glmvoice.runtime.generate import generate
    from glmvoice.sampling import SamplingParams

    if args.audio and not args.tokenizer:
        raise ValueError("--audio needs --tokenizer (the speech tokenizer directory)")
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        repetition_penalty=args.repetition_penalty, seed=args.seed,
    )
    dtype = torch.float32 if args.device == "cpu" else None
    model, tokenizer = load_llm(args.checkpoint, device=args.device, dtype=dtype)
    conversation = Conversation(tokenizer)
    speech_codes_in = None
    if args.input_ids is not None:
        prompt = _parse_ids(args.input_ids)
        if any(not 0 <= i < model.config.vocab_size for i in prompt):
            raise ValueError(f"--input-ids must lie in 0..{model.config.vocab_size - 1}")
    elif args.text is not None:
        prompt = conversation.add_text(args.text)
    else:
        from glmvoice.audio import read_wav
        from glmvoice.runtime.tokenizer_stream import load_speech_tokenizer

        samples, rate = read_wav(args.audio)
        speech_codes_in = load_speech_tokenizer(args.tokenizer, args.device).tokenize(samples, rate)
        prompt = conversation.add_speech(speech_codes_in)

    router = OutputRouter(tokenizer)
    result = generate(model, prompt, args.max_new_tokens, tokenizer.stop_ids, params, on_token=router.push)
    if result.finish_reason == "length":
        router.finish()
    output = {
        "prompt_ids": prompt,
        "ids": result.ids,
        "text": router.text,
        "speech_codes": router.speech_codes,
        "finish_reason": result.finish_reason,
        "stop_id": result.stop_id,
    }
    if speech_codes_in is not None:
        output["input_speech_codes"] = list(speech_codes_in)
    print(json.dumps(output, ensure_ascii=False))
    return 0
