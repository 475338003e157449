"""The runtime's numpy sampler against hand-computed values and a direct float64 computation (no torch:
these run on a runtime-only install)."""

import numpy as np
import pytest

from covo_edge.runtime.sampling import FIRST_TURN, LATER_TURNS, Sampling, penalize, pick, process_logits


def test_penalty_divides_positive_and_multiplies_negative_once_per_id():
    scores = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    penalize(scores, np.array([0, 1, 1, 0]), 2.0)
    assert scores.tolist() == [1.0, -4.0, 1.0, 0.5]


def test_penalties_stack_inside_the_window():
    """An id in the last 8 positions is penalised twice (1.05^2); an older one once; others not at all."""
    out = process_logits(np.array([1.0, 1.0, -1.0, 1.0], np.float32), np.array([0, 2] + [3] * 8), FIRST_TURN)
    np.testing.assert_allclose(out, [1 / 1.05, 1.0, -1.05, 1 / 1.05**2], rtol=1e-6)


def test_process_logits_leaves_its_input_alone():
    logits = np.array([3.0, 1.0, -2.0], np.float32)
    process_logits(logits, np.array([0, 2]), LATER_TURNS)
    assert logits.tolist() == [3.0, 1.0, -2.0]


def test_upstream_defaults():
    assert FIRST_TURN.greedy and (FIRST_TURN.repetition_penalty, FIRST_TURN.window_penalty, FIRST_TURN.window) == (1.05, 1.05, 8)
    assert not LATER_TURNS.greedy and (LATER_TURNS.temperature, LATER_TURNS.top_k, LATER_TURNS.top_p) == (0.5, 50, 0.9)


def direct(logits: np.ndarray, seq: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The rules written out in float64: penalties, temperature, top-k, then the smallest set of top ids
    whose probability reaches top_p."""
    x = logits.astype(np.float64).copy()
    for ids in (np.unique(seq), np.unique(seq[-8:])):
        x[ids] = np.where(x[ids] < 0, x[ids] * 1.05, x[ids] / 1.05)
    x /= temperature
    x[x < np.sort(x)[-top_k]] = -np.inf
    order = np.argsort(-x)
    p = np.exp(x[order] - x[order[0]])
    p /= p.sum()
    keep = np.searchsorted(np.cumsum(p), top_p) + 1  # ids up to and including the one that crosses top_p
    x[order[keep:]] = -np.inf
    return x


@pytest.mark.parametrize("seed", range(5))
def test_temperature_top_k_top_p_match_the_direct_computation(seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(3000) * 3).astype(np.float32)
    seq = rng.integers(0, 3000, 30)
    ours = process_logits(logits, seq, LATER_TURNS)
    ref = direct(logits, seq, 0.5, 50, 0.9)
    assert np.array_equal(np.isinf(ours), np.isinf(ref))
    keep = ~np.isinf(ref)
    np.testing.assert_allclose(ours[keep], ref[keep], rtol=1e-5)
    assert 1 <= keep.sum() <= 50


def test_greedy_takes_the_argmax():
    assert pick(np.array([0.1, 3.0, 2.9, -1.0], np.float32), FIRST_TURN, np.random.default_rng(0)) == 1


def test_draws_follow_the_softmax_and_a_seed_replays_them():
    scores = np.array([0.1, 3.0, 2.9, -1.0, -np.inf], np.float32)
    draws = [pick(scores, LATER_TURNS, rng) for rng in [np.random.default_rng(0)] for _ in range(2000)]
    freq = np.bincount(draws, minlength=5) / len(draws)
    expect = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(freq, expect, atol=0.035)  # 3 sigma of a 2000-draw frequency
    assert freq[4] == 0  # a masked id is never drawn
    replay = np.random.default_rng(0)
    assert [pick(scores, LATER_TURNS, replay) for _ in range(2000)] == draws
    other = np.random.default_rng(1)
    assert [pick(scores, LATER_TURNS, other) for _ in range(2000)] != draws


def test_but_overrides_only_what_is_given():
    s = LATER_TURNS.but(greedy=True, temperature=None)
    assert s.greedy and s.temperature == 0.5 and s.top_k == 50
    assert Sampling.from_dict({"greedy": False, "top_k": 5, "unknown": 1}) == Sampling(greedy=False, top_k=5)
