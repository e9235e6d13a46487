"""The chat template (exact official text) and the output router."""

import pytest

from glmvoice.chat_template import Conversation, OutputRouter
from training.bpe_tokenizer import build_tiny_tokenizer

SPEECH_SYSTEM = ("User will provide you with a speech instruction. Do it step by step. First, think about the "
                 "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens. ")
TEXT_SYSTEM = ("User will provide you with a text instruction. Do it step by step. First, think about the "
               "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens.")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), audio_codebook_size=1024)


def test_speech_prompt_is_the_official_string(tok):
    codes = [5, 0, 1023, 77]
    prompt = Conversation(tok).add_speech(codes)
    official = (f"<|system|>\n{SPEECH_SYSTEM}<|user|>\n<|begin_of_audio|>"
                + "".join(f"<|audio_{c}|>" for c in codes)
                + "<|end_of_audio|><|assistant|>streaming_transcription\n")
    # The official server tokenizes that string with [gMASK]<sop> prepended.
    assert prompt == tok.encode_prompt(official)
    assert tok.decode(prompt) == "[gMASK]<sop>" + official


def test_text_prompt_is_the_official_string(tok):
    prompt = Conversation(tok).add_text("讲个故事 please")
    official = f"<|system|>\n{TEXT_SYSTEM}<|user|>\n讲个故事 please<|assistant|>streaming_transcription\n"
    assert prompt == tok.encode_prompt(official)


def test_multi_turn_history_keeps_ids_and_system_prompt_once(tok):
    conv = Conversation(tok)
    first = conv.add_speech([1, 2, 3])
    completion = tok.encode("Sure.") + tok.audio_ids([9, 8])
    conv.add_completion(completion + [tok.token_id("<|user|>")])  # the stop id is not kept
    second = conv.add_text("And then?")
    assert second[: len(first) + len(completion)] == first + completion
    tail = tok.decode(second[len(first) + len(completion):])
    assert tail == "<|user|>\nAnd then?<|assistant|>streaming_transcription\n"
    assert second.count(tok.token_id("<|system|>")) == 1 and second.count(tok.token_id("[gMASK]")) == 1
    assert SPEECH_SYSTEM in tok.decode(second)  # the first turn's mode picks the system prompt


def test_router_splits_text_and_speech_with_utf8_split_across_tokens(tok):
    char_ids = tok.encode("龍")
    assert len(char_ids) > 1  # a rare character spans several byte tokens
    stream = tok.encode("Hi ") + tok.audio_ids([3, 1000]) + char_ids + tok.audio_ids([0]) + tok.encode("好")
    stream += [tok.token_id("<|user|>")] + tok.encode("never")
    router = OutputRouter(tok)
    deltas, codes = [], []
    for token in stream:
        routed = router.push(token)
        if routed.stop:
            break
        deltas.append(routed.text)
        if routed.speech_code is not None:
            codes.append(routed.speech_code)
    assert codes == [3, 1000, 0] == router.speech_codes
    assert "".join(deltas) == "Hi 龍好" == router.text
    char_deltas = deltas[len(tok.encode("Hi ")) + 2: len(tok.encode("Hi ")) + 2 + len(char_ids)]
    assert char_deltas[:-1] == [""] * (len(char_ids) - 1) and char_deltas[-1] == "龍"
    assert router.stopped


def test_router_flushes_incomplete_character_at_stop_and_flags_other_ids(tok):
    router = OutputRouter(tok)
    assert router.push(tok.encode("龍")[0]).text == ""
    end = router.push(tok.token_id("<|endoftext|>"))
    assert end.stop and end.text == "\ufffd"
    assert router.push(tok.token_id("<|begin_of_audio|>")).special == "<|begin_of_audio|>"
    assert router.push(tok.vocab_size).unknown  # an id of the embedding's padding rows
    assert OutputRouter(tok, stop_ids=[]).push(tok.token_id("<|user|>")).special == "<|user|>"
