from __future__ import annotations

import numpy as np
import pytest

from grape.metrics import METRICS, score


def test_hand_computed_values():
    control = np.array([1.0, 1.0, 1.0, 1.0])
    truth = np.array([2.0, 0.0, 1.0, 1.0])
    pred = np.array([1.5, 0.5, 1.0, 1.0])
    de = np.array([0, 1])
    got = score(pred, truth, control, de)
    assert got["mse"] == pytest.approx((0.25 + 0.25) / 4)
    assert got["mse_de"] == pytest.approx(0.25)
    assert got["pearson_delta"] == pytest.approx(1.0)  # deltas (0.5,-0.5,0,0) vs (1,-1,0,0)
    assert got["pearson_delta_de"] == pytest.approx(1.0)
    assert got["pearson"] == pytest.approx(np.corrcoef(pred, truth)[0, 1])


def test_no_change_prediction_has_undefined_delta_correlation():
    control = np.array([1.0, 2.0, 3.0])
    got = score(control.copy(), np.array([1.5, 2.0, 2.0]), control, np.array([0, 2]))
    assert np.isnan(got["pearson_delta"])


def test_registry_records_best_and_direction():
    assert METRICS["mse"].best == 0.0 and not METRICS["mse"].higher_is_better
    assert METRICS["pearson_delta"].best == 1.0 and METRICS["pearson_delta"].higher_is_better
