"""Metric functions against hand-computed values."""
import math

import numpy as np
import pytest

from action_ddim import metrics as M


def _pair():
    t = np.linspace(0, 1, 8)
    orig = np.zeros((2, 8, 3))
    orig[0, :, 0] = t
    orig[0, :, 1] = 0.5
    orig[1, :, 0] = 0.2
    orig[1, :, 1] = t**2
    orig[0, 2:5, 2] = 1
    recon = orig.copy()
    recon[..., :2] += 0.01
    recon[0, 2, 2] = 0.4   # a press decoded as released
    recon[1, 0, 2] = 1.3   # clipped to 1 for mse, wrongly pressed
    return orig, recon


def test_reconstruction_metrics_by_hand():
    orig, recon = _pair()
    m = M.reconstruction_metrics(orig, recon)
    assert m["coord_mse"] == pytest.approx(1e-4)
    press_err = ((1 - 0.4) ** 2 + 1.0**2) / 16
    assert m["mse"] == pytest.approx((2 * 1e-4 + press_err) / 3)
    assert m["press_accuracy"] == pytest.approx(14 / 16)
    assert m["press_majority_rate"] == pytest.approx(13 / 16)
    assert m["press_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    sig0 = np.sum((orig[0, :, 0] - orig[0, :, 0].mean()) ** 2)
    sig1 = np.sum((orig[1, :, 1] - orig[1, :, 1].mean()) ** 2)
    noise = 16 * 1e-4
    assert m["mean_snr_db"] == pytest.approx((10 * math.log10(sig0 / noise) + 10 * math.log10(sig1 / noise)) / 2)
    assert m["variance_ratio_x"] == pytest.approx(1.0)  # a constant offset keeps variance
    assert m["smoothness_ratio_y"] == pytest.approx(1.0)


def test_snr_skips_motionless_sequences_and_variance_ratio_detects_shrinkage():
    orig = np.zeros((2, 6, 3))
    orig[0, :, 0] = np.arange(6) / 10
    orig[1] = 0.3  # no motion
    recon = orig.copy()
    recon[0, :, 0] = 0.25 + (orig[0, :, 0] - 0.25) * 0.5
    s = M.snr_db_per_sequence(orig, recon)
    assert np.isnan(s[1]) and np.isfinite(s[0])
    assert M.mean_snr_db(orig, recon) == pytest.approx(s[0])
    assert M.variance_ratio(orig, recon, 0) == pytest.approx(0.25)
    curve = np.zeros((1, 6, 3))
    curve[0, :, 1] = (np.arange(6) / 10) ** 2  # second difference 0.02 everywhere
    jagged = curve.copy()
    jagged[0, :, 1] += [0, 0.02, 0, 0.02, 0, 0.02]  # second differences -0.02, 0.06, -0.02, 0.06
    assert M.smoothness_ratio(curve, jagged, 1) == pytest.approx(2.0)


def test_generation_metrics():
    data = np.zeros((1, 6, 3))
    data[0, :, 0] = np.arange(6) * 0.1
    data[0, 1:3, 2] = 1
    same = M.generation_metrics(data, data)
    assert same["gen/speed_w1"] == 0 and same["gen/path_length_w1"] == 0 and same["gen/press_run_length_w1"] == 0
    assert same["gen/press_rate"] == pytest.approx(2 / 6)
    still = data.copy()
    still[0, :, 0] = 0.0
    still[0, :, 2] = [1, 1, 1, 1, 0, 0]
    m = M.generation_metrics(data, still)
    assert m["gen/speed_w1"] == pytest.approx(0.1)
    assert m["gen/path_length_w1"] == pytest.approx(0.5)
    assert m["gen/press_run_length_w1"] == pytest.approx(2.0)
    assert list(M.press_run_lengths(np.array([[1, 1, 0, 1], [0, 0, 0, 1]]))) == [2, 1, 1]
