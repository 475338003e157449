"""The accuracy report's numbers against values worked out by hand: identical logits, a flipped argmax with a
known KL divergence, a code disagreement hidden behind an agreeing top-1, and the per-graph output error."""

import math

import numpy as np
import pytest

from covo_edge.calibration.report import _output_error, compare_logits

OFFSET = 2  # vocabulary of 4: ids 0-1 text, 2-3 audio codes


def test_identical_logits_give_zero_error_and_full_agreement():
    logits = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    r = compare_logits(logits, logits.copy(), np.array([0, 2, 3, 1, 2, 3]), OFFSET)
    assert r["kl_nats"] == {"mean": 0.0, "max": 0.0, "min": 0.0}
    assert r["logit_rel_error"]["max"] == 0.0
    assert r["top1_agreement"] == 1.0 and r["audio_code_agreement"] == 1.0
    assert r["steps"] == 6 and r["audio_steps"] == 4


def test_a_flipped_argmax_has_the_kl_and_error_worked_out_by_hand():
    """Step 0: p = q. Step 1: p = (0.6, 0.4), q = (0.4, 0.6) over two ids (the others -inf-like):
    KL(p||q) = 0.6 ln(0.6/0.4) + 0.4 ln(0.4/0.6) = 0.2 ln 1.5; the argmax flips, so top-1 agreement is 1/2."""
    tiny = -1e4
    ref = np.array([[math.log(0.7), math.log(0.3), tiny, tiny],
                    [math.log(0.6), math.log(0.4), tiny, tiny]])
    got = np.array([[math.log(0.7), math.log(0.3), tiny, tiny],
                    [math.log(0.4), math.log(0.6), tiny, tiny]])
    r = compare_logits(ref, got, np.array([1, 0]), OFFSET)
    kl = 0.2 * math.log(1.5)
    assert r["kl_nats"]["max"] == pytest.approx(kl, abs=1e-9)
    assert r["kl_nats"]["mean"] == pytest.approx(kl / 2, abs=1e-9) and r["kl_nats"]["min"] == pytest.approx(0, abs=1e-12)
    assert r["top1_agreement"] == 0.5
    # ||got - ref|| / ||ref|| on step 1: the difference is (ln(2/3), ln(3/2), 0, 0)
    rel = math.sqrt(2) * math.log(1.5) / math.sqrt(math.log(0.6) ** 2 + math.log(0.4) ** 2 + 2 * tiny**2)
    assert r["logit_rel_error"]["max"] == pytest.approx(rel, rel=1e-9)
    assert r["audio_steps"] == 0 and r["audio_code_agreement"] is None


def test_code_agreement_looks_only_at_the_codes_where_the_next_id_is_a_code():
    """Both rows pick text id 0 overall (top-1 agrees), but among the codes the first picks 2 and the second
    3: on a step whose next id is a code that is a code disagreement; on a text step it is not counted."""
    ref = np.array([[5.0, 0.0, 1.0, 0.0], [5.0, 0.0, 1.0, 0.0], [0.0, 0.0, 3.0, 1.0]])
    got = np.array([[5.0, 0.0, 0.0, 1.0], [5.0, 0.0, 0.0, 1.0], [0.0, 0.0, 3.0, 1.0]])
    r = compare_logits(ref, got, np.array([3, 0, 2]), OFFSET)
    assert r["top1_agreement"] == 1.0
    assert r["audio_steps"] == 2 and r["audio_code_agreement"] == 0.5


def test_output_error_and_cosine_of_known_vectors():
    ref = np.array([3.0, 4.0])
    assert _output_error(ref, ref) == (0.0, 1.0)
    assert _output_error(ref, 2 * ref) == pytest.approx((1.0, 1.0))  # |2r - r| / |r|; same direction
    assert _output_error(ref, np.array([-4.0, 3.0])) == pytest.approx((math.sqrt(2), 0.0))  # orthogonal, same norm
    assert _output_error(ref, -ref) == pytest.approx((2.0, -1.0))
