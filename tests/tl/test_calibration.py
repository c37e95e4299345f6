import numpy as np
import pytest
from scipy.special import softmax

import genohoption as gh
from genohoption.tl._calibration import scaled_probabilities, uncertainty_from_probabilities


def test_ece_hand_made_case():
    # two cells at confidence 0.9 with one right (gap 0.4), two at 0.6 both right (gap 0.4): ECE 0.4
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    assert gh.tl.expected_calibration_error(p, np.array([0, 1, 0, 0]), n_bins=10) == pytest.approx(0.4)
    # perfectly calibrated: confidence 0.75 and 3 of 4 right
    p = np.tile([0.75, 0.25], (4, 1))
    assert gh.tl.expected_calibration_error(p, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    # in one bin the same gaps (-0.4, +0.4) cancel: mean confidence 0.75, accuracy 0.75
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    assert gh.tl.expected_calibration_error(p, np.array([0, 1, 0, 0]), n_bins=1) == pytest.approx(0.0)
    # a confidence of exactly 1 falls in the last bin
    assert gh.tl.expected_calibration_error(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(1.0)


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError, match="softmax outputs, not logits"):
        gh.tl.expected_calibration_error(np.array([[3.0, -1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="class indices"):
        gh.tl.expected_calibration_error(np.array([[0.5, 0.5]]), np.array([2]))
    with pytest.raises(ValueError, match="n_bins"):
        gh.tl.expected_calibration_error(np.array([[0.5, 0.5]]), np.array([0]), n_bins=0)
    with pytest.raises(ValueError, match="labels must be a 1-d array of 1"):
        gh.tl.expected_calibration_error(np.array([[0.5, 0.5]]), np.array([0, 1]))


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(20000, 5))
    p = softmax(logits / true_t, axis=1)
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)  # drawn from softmax(logits / T)
    t = gh.tl.fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    # the fitted temperature lowers the ECE of the raw (T = 1) probabilities to sampling noise
    before = gh.tl.expected_calibration_error(softmax(logits, axis=1), labels)
    after = gh.tl.expected_calibration_error(scaled_probabilities(logits, t), labels)
    assert after < 0.02 < before


def test_temperature_keeps_the_argmax_and_checks_input():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]])
    for t in (0.3, 1.0, 7.0):
        assert (scaled_probabilities(logits, t).argmax(1) == [0, 2]).all()
    with pytest.raises(ValueError, match="temperature"):
        scaled_probabilities(logits, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        gh.tl.fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="no cell"):
        gh.tl.fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int))


def test_unknown_threshold_rule():
    u = np.arange(1, 20) / 20  # 19 held-out cells: 0.05 ... 0.95
    # rank ceil(20 * 0.9) = 18 -> the 18th smallest, 0.90: 1 of 19 cells (5 %) lies above
    assert gh.tl.unknown_threshold(u, false_unknown_rate=0.1) == pytest.approx(0.90)
    assert gh.tl.unknown_threshold(u[::-1], false_unknown_rate=0.1) == pytest.approx(0.90)  # order does not matter
    # rank ceil(20 * 0.5) = 10 -> 0.50
    assert gh.tl.unknown_threshold(u, false_unknown_rate=0.5) == pytest.approx(0.50)
    # too few cells for 5 %: the largest value, so no held-out cell is called Unknown
    assert gh.tl.unknown_threshold([0.1, 0.3, 0.2], false_unknown_rate=0.05) == pytest.approx(0.3)
    for rate in (0.0, 1.0):
        with pytest.raises(ValueError, match="false_unknown_rate"):
            gh.tl.unknown_threshold(u, false_unknown_rate=rate)
    with pytest.raises(ValueError, match="at least one finite"):
        gh.tl.unknown_threshold([])


def test_uncertainty_is_one_minus_max_probability():
    p = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(uncertainty_from_probabilities(p), [0.3, 2 / 3])
