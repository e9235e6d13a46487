"""Sampling: greedy, seeds, top-k / top-p (against transformers' warpers), penalties, per-row batches."""

import pytest
import torch

from glmvoice.runtime.sampler import apply_penalties, filter_top_k_top_p, make_generator, sample
from glmvoice.sampling import SamplingParams


def draw(logits, params, n, seed_generator=None):
    generator = seed_generator or make_generator(params)
    return [int(sample(logits[None], [params], [generator])[0]) for _ in range(n)]


def test_temperature_zero_is_greedy():
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0.0, seed=s) for s in range(3)]
    out = sample(logits, params, [make_generator(p) for p in params])
    assert out.tolist() == logits.argmax(-1).tolist()


def test_seed_reproducible_and_distinct():
    logits = torch.zeros(1000)  # uniform: every draw is informative
    a = draw(logits, SamplingParams(seed=11), 20)
    b = draw(logits, SamplingParams(seed=11), 20)
    c = draw(logits, SamplingParams(seed=12), 20)
    assert a == b and a != c


def test_top_k_keeps_exactly_the_k_most_likely():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.5, -1.0, 2.9])
    seen = set(draw(logits, SamplingParams(top_k=3, seed=0), 400))
    assert seen == {1, 3, 5}


@pytest.mark.parametrize("top_p, kept", [(0.8, {0, 1}), (0.81, {0, 1, 2}), (0.3, {0}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_smallest_set_reaching_mass(top_p, kept):
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    filtered = filter_top_k_top_p(logits, 0, top_p)
    assert set(torch.nonzero(filtered > float("-inf")).flatten().tolist()) == kept


def test_top_k_top_p_agree_with_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    generator = torch.Generator().manual_seed(5)
    for _ in range(20):
        logits = 3 * torch.randn(1, 300, generator=generator)
        for top_k, top_p in ((0, 0.8), (0, 0.95), (40, 1.0), (10, 0.5)):
            expected = logits
            if top_k:
                expected = TopKLogitsWarper(top_k)(None, expected)
            if top_p < 1:
                expected = TopPLogitsWarper(top_p)(None, expected)
            ours = filter_top_k_top_p(logits[0], top_k, top_p)
            assert torch.equal(ours.isinf(), expected[0].isinf())


def test_sampled_frequencies_follow_renormalised_probabilities():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    counts = torch.bincount(torch.tensor(draw(logits, SamplingParams(top_p=0.8, seed=3), 2000)), minlength=4)
    assert counts[2] == counts[3] == 0
    assert abs(counts[0].item() / 2000 - 0.625) < 0.05  # 0.5 / 0.8


def test_penalties():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0])
    out = apply_penalties(logits, SamplingParams(repetition_penalty=2.0), seen=[0, 1, 0], generated=[])
    assert out.tolist() == [1.0, -2.0, 0.5, 0.0]
    out = apply_penalties(logits, SamplingParams(presence_penalty=1.5), seen=[0, 1, 2], generated=[2, 2])
    assert out.tolist() == [2.0, -1.0, -1.0, 0.0]
    # Repetition penalty changes a greedy choice.
    assert int(sample(logits[None], [SamplingParams(temperature=0, repetition_penalty=10.0)], [None], [[0]])[0]) == 2


def test_rows_have_their_own_parameters_and_generators():
    logits = torch.randn(3, 200, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, seed=4), SamplingParams(top_k=1, seed=9)]
    out = sample(logits, params, [make_generator(p) for p in params])
    alone = sample(logits[1:2], [params[1]], [make_generator(params[1])])
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax() and out[1] == alone[0]


def test_invalid_parameters_rejected():
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2), dict(repetition_penalty=0)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_cli_defaults_are_the_official_sampling():
    import argparse

    from glmvoice.cli import generate as cli
    from glmvoice.sampling import OFFICIAL_SAMPLING

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--checkpoint", "x", "--text", "hi"])
    assert {"temperature": args.temperature, "top_p": args.top_p} == OFFICIAL_SAMPLING
