"""The reference's (torch) decoding rules, checked against direct numpy computations."""

import numpy as np

from conftest import needs

torch = needs("torch", "export")

from covo_edge.export.generate import reference_penalize, reference_pick, reference_process_logits  # noqa: E402
from covo_edge.runtime.sampling import LATER_TURNS, Sampling, process_logits  # noqa: E402


def test_penalty_divides_positive_and_multiplies_negative_once_per_id():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = reference_penalize(logits, torch.tensor([0, 1, 1, 0]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]


def test_penalties_stack_inside_the_window():
    """An id in the last 8 positions is penalised twice (1.05^2); an older one once."""
    logits = torch.tensor([1.0, 1.0, -1.0, 1.0])
    seq = torch.tensor([0, 2] + [3] * 8)
    out = reference_process_logits(logits, seq, Sampling())
    np.testing.assert_allclose(out.numpy(), [1 / 1.05, 1.0, -1.05, 1 / 1.05**2], rtol=1e-6)


def test_top_k_top_p_temperature_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(1000).astype(np.float32) * 3
    seq = np.array([5, 17, 17, 999])
    s = Sampling(greedy=False, temperature=0.5, top_k=50, top_p=0.9, repetition_penalty=1.05, window_penalty=1.05)
    ours = reference_process_logits(torch.from_numpy(logits), torch.from_numpy(seq), s).numpy()

    x = logits.astype(np.float64).copy()
    for penalty_ids in (np.unique(seq), np.unique(seq[-8:])):
        x[penalty_ids] = np.where(x[penalty_ids] < 0, x[penalty_ids] * 1.05, x[penalty_ids] / 1.05)
    x = x / 0.5
    kth = np.sort(x)[-50]
    x[x < kth] = -np.inf
    order = np.argsort(x)
    p = np.exp(x[order] - x[order][-1])
    p /= p.sum()
    drop = np.cumsum(p) <= 0.1
    drop[-1] = False
    x[order[drop]] = -np.inf
    assert np.array_equal(np.isinf(ours), np.isinf(x))
    keep = ~np.isinf(x)
    np.testing.assert_allclose(ours[keep], x[keep], rtol=1e-5)
    assert 1 <= keep.sum() <= 50


def test_greedy_takes_the_argmax_and_sampling_follows_the_softmax():
    scores = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert reference_pick(scores, Sampling(), None) == 1
    g = torch.Generator().manual_seed(0)
    draws = [reference_pick(scores, LATER_TURNS, g) for _ in range(2000)]
    freq = np.bincount(draws, minlength=4) / len(draws)
    expect = torch.softmax(scores, 0).numpy()
    np.testing.assert_allclose(freq, expect, atol=0.035)  # 3 sigma of a 2000-draw frequency
    replay = torch.Generator().manual_seed(0)
    assert [reference_pick(scores, LATER_TURNS, replay) for _ in range(2000)] == draws  # one seed, one sequence


def test_the_runtime_sampler_gives_the_reference_scores():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(5000) * 3).astype(np.float32)
    seq = rng.integers(0, 5000, 40)
    for s in (Sampling(), Sampling(greedy=False, temperature=0.5, top_k=50, top_p=0.9)):
        ours = process_logits(logits, seq, s)
        ref = reference_process_logits(torch.from_numpy(logits), torch.from_numpy(seq), s).numpy()
        assert np.array_equal(np.isinf(ours), np.isinf(ref))
        np.testing.assert_allclose(ours[~np.isinf(ours)], ref[~np.isinf(ref)], rtol=1e-6)
