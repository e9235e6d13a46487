"""Audio helpers: resampling, codecs, WAV I/O, and Whisper log-mel parity with transformers' feature extractor."""

import numpy as np
import pytest

from glmvoice.audio import (
    SUPPORTED_RATES,
    AudioFormatError,
    check_waveform,
    decode,
    encode,
    read_wav,
    resample,
    wav_bytes,
)
from glmvoice.models.mel import log_mel_spectrogram, mel_filter_bank


def _tone(rate: int, seconds: float = 1.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_resample_to_16k_keeps_length_pitch_and_level(rate):
    out = resample(_tone(rate), rate, 16000)
    assert out.dtype == np.float32 and abs(len(out) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out[1000:-1000] * np.hanning(len(out) - 2000)))
    peak_hz = np.argmax(spectrum) * 16000 / (len(out) - 2000)
    assert abs(peak_hz - 440.0) < 3.0
    assert abs(np.sqrt(np.mean(out[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


def test_resample_identity_and_bad_rates():
    x = _tone(16000)
    assert np.array_equal(resample(x, 16000, 16000), x)
    with pytest.raises(AudioFormatError):
        resample(x, 0, 16000)


@pytest.mark.parametrize("encoding,tolerance", [("LINEAR16", 1 / 32767), ("MULAW", 0.035), ("ALAW", 0.035)])
def test_codec_round_trip(encoding, tolerance):
    x = np.linspace(-1, 1, 4001).astype(np.float32)
    y = decode(encode(x, encoding), encoding)
    assert y.shape == x.shape
    # G.711 is logarithmic: small samples keep small absolute errors, loud ones a few percent.
    assert np.all(np.abs(y - x) <= tolerance * np.maximum(np.abs(x), 0.05) + 1e-4)


def test_unknown_codec_and_bad_waveforms():
    with pytest.raises(AudioFormatError):
        encode(np.zeros(4, np.float32), "OPUS")
    for bad in (np.zeros(0, np.float32), np.zeros((2, 4), np.float32), np.array([0.0, np.nan], np.float32)):
        with pytest.raises(AudioFormatError):
            check_waveform(bad)


def test_wav_round_trip_and_stereo(tmp_path):
    import wave

    x = _tone(22050, 0.2)
    y, rate = read_wav(wav_bytes(x, 22050))
    assert rate == 22050 and np.abs(y - x).max() < 1e-4
    left, right = (x * 32767).astype("<i2"), np.zeros(len(x), "<i2")
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
        wav.writeframes(np.stack([left, right], axis=1).tobytes())
    mono, rate = read_wav(tmp_path / "stereo.wav")
    assert rate == 44100 and len(mono) == len(x) and np.abs(mono - x / 2).max() < 1e-4
    with pytest.raises(AudioFormatError):
        read_wav(b"RIFF0000WAVEnot really")


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filter_bank_matches_transformers(n_mels):
    from transformers.audio_utils import mel_filter_bank as reference

    expected = reference(201, n_mels, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(mel_filter_bank(n_mels), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(librivox_clips, n_mels):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    samples, rate = read_wav(librivox_clips[0][0])
    assert rate == 16000
    # As the GLM-4-Voice tokenizer calls it (pad to whole tokens) and as Whisper does (pad to 30 s).
    for padded, kwargs in (
        (np.pad(samples, (0, -len(samples) % 1280)), dict(padding="longest", pad_to_multiple_of=1280)),
        (np.pad(samples, (0, 480000 - len(samples))), dict()),
    ):
        expected = extractor(samples, sampling_rate=16000, return_tensors="np", **kwargs).input_features[0]
        ours = log_mel_spectrogram(padded, n_mels).numpy()
        assert ours.shape == expected.shape == (n_mels, len(padded) // 160)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_log_mel_rejects_too_short_audio():
    with pytest.raises(AudioFormatError):
        log_mel_spectrogram(np.zeros(100, np.float32), 80)
