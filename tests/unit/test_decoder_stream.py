"""Decoder streams: block-by-block decoding with bounded context, compared with whole-utterance decoding."""

import numpy as np
import pytest
import torch

from glmvoice.audio import StreamResampler, resample
from glmvoice.runtime.decoder_stream import DecoderStreams, StreamSettings, seam_metric

# Measured on the tiny random decoder (seed 4321), 57-100 codes, against the offline decode with the same seed:
# relative RMS distance of the waveform 0.012 (bounded window) / 0.014 (official unbounded prompt), of the mel
# (RMS error / mel std) 0.19-0.20 / 0.21-0.23. Another seed is 0.06-0.10 away in waveform and 1.4 in mel
# (the random tiny vocoder barely follows its mel). A stream with no context at all has joins with 2.6x the
# spectral flux of the block insides.
MAX_WAVE_DISTANCE = 0.03
MAX_MEL_DISTANCE = 0.3
SEAM_LIMIT = 1.1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def codes_for(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 1024, n).tolist()


def stream_decode(decoder, codes, seed=5, piece=10, settings=StreamSettings(), output_rate=None, mel_out=None):
    """Feeds `piece` codes at a time; returns the emitted chunks (the last one from finalize)."""
    streams = DecoderStreams(decoder, settings)
    with streams.stream("s", seed=seed, output_rate=output_rate, record_mel=mel_out is not None) as stream:
        chunks = [stream.push(codes[i : i + piece]) for i in range(0, len(codes), piece)]
        chunks.append(stream.finalize())
        if mel_out is not None:
            mel_out.append(stream.state.recorded_mel())
    return chunks


def mel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float(((a - b) ** 2).mean().sqrt() / b.std())


def relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    assert len(a) == len(b)
    return float(np.sqrt(((a - b) ** 2).mean() / (b**2).mean()))


def joins_of(chunks) -> list[int]:
    return sorted(set(int(j) for j in np.cumsum([len(c) for c in chunks])[:-1]))


def test_first_audio_after_one_block_of_codes(tiny_speech_decoder):
    streams = DecoderStreams(tiny_speech_decoder)
    codes = codes_for(10)
    with streams.stream("a") as stream:
        assert len(stream.push(codes[:9])) == 0
        first = stream.push(codes[9:])
        assert len(first) > 0.5 * 0.8 * 22050  # most of the block's 0.8 s; the rest is held for crossfades
    assert "a" not in streams.states


def test_streaming_matches_offline(tiny_speech_decoder):
    codes = codes_for(57)
    offline = tiny_speech_decoder.decode(codes, seed=5)
    offline_mel = tiny_speech_decoder.decode_mel(codes, seed=5)[0]
    for piece in (7, 10, 23):  # codes arrive in pieces that do not line up with blocks
        mels = []
        streamed = np.concatenate(stream_decode(tiny_speech_decoder, codes, piece=piece, mel_out=mels))
        assert len(streamed) == len(offline)
        assert relative_distance(streamed, offline) < MAX_WAVE_DISTANCE
        assert mel_distance(mels[0], offline_mel) < MAX_MEL_DISTANCE
    mels = []
    other_seed = np.concatenate(stream_decode(tiny_speech_decoder, codes, seed=6, mel_out=mels))
    assert relative_distance(other_seed, offline) > 1.5 * MAX_WAVE_DISTANCE  # the measures can fail
    assert mel_distance(mels[0], offline_mel) > 3 * MAX_MEL_DISTANCE


def test_joins_are_no_rougher_than_block_insides(tiny_speech_decoder):
    codes = codes_for(100)
    chunks = stream_decode(tiny_speech_decoder, codes)
    seams = seam_metric(np.concatenate(chunks), joins_of(chunks), period=256)
    assert seams["flux_ratio"] < SEAM_LIMIT and seams["step_ratio"] < SEAM_LIMIT
    naive = StreamSettings(context_blocks=0, prompt_frames=0, overlap_frames=0, vocoder_context=0, vocoder_lookahead=0, vocoder_crossfade=0)
    naive_chunks = stream_decode(tiny_speech_decoder, codes, settings=naive)
    assert seam_metric(np.concatenate(naive_chunks), joins_of(naive_chunks), period=256)["flux_ratio"] > 1.5


def test_batched_streams_equal_unbatched(tiny_speech_decoder):
    lengths, seeds = {"a": 35, "b": 22, "c": 41}, {"a": 1, "b": 2, "c": 3}
    codes = {sid: codes_for(n, seed=seeds[sid]) for sid, n in lengths.items()}
    alone = {sid: np.concatenate(stream_decode(tiny_speech_decoder, codes[sid], seed=seeds[sid])) for sid in codes}
    streams = DecoderStreams(tiny_speech_decoder)
    out = {sid: [] for sid in codes}
    for sid in codes:
        streams.open(sid, seed=seeds[sid])
        streams.feed(sid, codes[sid])
    batch_sizes = []
    while any(not streams.states[sid].finished for sid in codes):
        result = streams.run(final=list(codes))  # one batched call for every stream with work
        batch_sizes.append(len(result))
        for sid, chunk in result.items():
            out[sid].append(chunk)
    assert max(batch_sizes) == 3
    for sid in codes:
        np.testing.assert_allclose(np.concatenate(out[sid]), alone[sid], atol=2e-5)


def test_cost_per_block_is_bounded(tiny_speech_decoder):
    """Frames through the estimator per block: flat with the bounded window, growing with the official prompt."""
    flow = tiny_speech_decoder.flow
    seen = []
    original = flow.sample

    def recording_sample(mu, *args, **kwargs):
        seen.append(mu.shape[-1])
        return original(mu, *args, **kwargs)

    flow.sample = recording_sample
    try:
        stream_decode(tiny_speech_decoder, codes_for(200), piece=10)
        bounded = seen[:20]
        seen.clear()
        stream_decode(tiny_speech_decoder, codes_for(200), piece=10, settings=StreamSettings(context_blocks=None, prompt_frames=None))
        unbounded = seen[:20]
    finally:
        del flow.sample
    assert bounded[19] <= 1.3 * bounded[0] and max(bounded[2:]) - min(bounded[2:]) <= 1
    assert unbounded[19] > 10 * unbounded[0]


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_stream_resampler_equals_whole_signal_resampling(rate):
    x = np.random.default_rng(rate).standard_normal(22050).astype(np.float32)
    resampler = StreamResampler(22050, rate)
    cuts = [0, 1000, 1001, 5000, 12345, 22050]
    pieces = [resampler.push(x[a:b], final=b == len(x)) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_allclose(np.concatenate(pieces), resample(x, 22050, rate), atol=1e-5)


def test_output_resampled_for_telephony(tiny_speech_decoder):
    codes = codes_for(30)
    native = np.concatenate(stream_decode(tiny_speech_decoder, codes))
    narrow = np.concatenate(stream_decode(tiny_speech_decoder, codes, output_rate=8000))
    np.testing.assert_allclose(narrow, resample(native, 22050, 8000), atol=1e-5)
    with pytest.raises(ValueError, match="output rate"):
        DecoderStreams(tiny_speech_decoder).open("x", output_rate=11025)


def test_reset_replays_the_same_reply(tiny_speech_decoder):
    streams = DecoderStreams(tiny_speech_decoder)
    codes = codes_for(25)
    with streams.stream("r", seed=9) as stream:
        first = np.concatenate([stream.push(codes), stream.finalize()])
        with pytest.raises(ValueError, match="finalized"):
            stream.push(codes[:3])
        stream.reset()
        second = np.concatenate([stream.push(codes), stream.finalize()])
        with pytest.raises(ValueError, match="already open"):
            streams.open("r")
    np.testing.assert_array_equal(first, second)


def test_short_reply_and_odd_block_size(tiny_speech_decoder):
    # (20, 10) ends on a block boundary: the last pass has no codes and only flushes the tentative mel frames.
    for n, block in ((3, 10), (17, 4), (20, 10)):
        codes = codes_for(n)
        chunks = stream_decode(tiny_speech_decoder, codes, piece=5, settings=StreamSettings(block_size=block))
        assert sum(len(c) for c in chunks) == 256 * int(n / 12.5 * 22050 / 256)


def test_vocoder_crossfade_blends_each_join_and_nothing_else(tiny_speech_decoder):
    """Against the same stream without the crossfade: equal length, different samples, all of them within
    vocoder_crossfade samples after a join (where two vocoder runs meet)."""
    codes = codes_for(45)
    settings = StreamSettings()
    chunks = stream_decode(tiny_speech_decoder, codes, settings=settings)
    plain = np.concatenate(stream_decode(tiny_speech_decoder, codes, settings=StreamSettings(vocoder_crossfade=0)))
    blended = np.concatenate(chunks)
    assert len(blended) == len(plain)
    changed = np.flatnonzero(np.abs(blended - plain) > 1e-6)
    assert len(changed) > 0
    joins = np.array(joins_of(chunks))
    after_join = changed[:, None] - joins[None, :]
    assert ((after_join >= 0) & (after_join < settings.vocoder_crossfade)).any(axis=1).all()


def test_a_stream_without_codes_finalizes_to_nothing(tiny_speech_decoder):
    """A reply cancelled before its first speech code: finalize settles an empty mel and emits no samples."""
    with DecoderStreams(tiny_speech_decoder).stream("e") as stream:
        assert len(stream.finalize()) == 0


def test_synthesize_cli_writes_the_waveform(tmp_path, tiny_speech_decoder_dir, capsys):
    import json

    from glmvoice.audio import read_wav
    from glmvoice.cli import main

    codes = codes_for(23)
    out = tmp_path / "reply.wav"
    assert main(["synthesize", "--checkpoint", str(tiny_speech_decoder_dir), "--tokens", ",".join(map(str, codes)), "--seed", "3", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    wave, rate = read_wav(out)
    assert rate == 22050 and len(wave) == report["samples"] == 256 * int(23 / 12.5 * 22050 / 256)
    (tmp_path / "codes.json").write_text(json.dumps({"tokens": codes}))
    out8k = tmp_path / "reply8k.wav"
    assert main(["synthesize", "--checkpoint", str(tiny_speech_decoder_dir), "--tokens-file", str(tmp_path / "codes.json"), "--seed", "3", "--rate", "8000", "--out", str(out8k)]) == 0
    wave8k, rate8k = read_wav(out8k)
    assert rate8k == 8000
    np.testing.assert_allclose(wave8k, resample(wave, 22050, 8000), atol=2e-4)  # PCM16 in the files
    assert main(["synthesize", "--checkpoint", str(tiny_speech_decoder_dir), "--tokens", "1,5000", "--out", str(out)]) == 2
