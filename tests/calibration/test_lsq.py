"""The least-squares tools on problems solved by hand."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.calibration.device import significant
from moesim.calibration.lsq import identifiable, minimise_scalar, relative_nnls, relative_rms


def test_an_exact_line_comes_back_exactly() -> None:
    x = np.array([1.0, 10.0, 100.0, 1000.0])
    fit = relative_nnls(np.column_stack([x, np.ones(4)]), 3 * x + 2, fallback=np.zeros(2), priority=[0, 1])
    assert fit.values == pytest.approx([3.0, 2.0]) and fit.identified.tolist() == [True, True]


def test_an_offset_is_subtracted_before_the_fit() -> None:
    x = np.array([1.0, 2.0, 4.0])
    fit = relative_nnls(x[:, None], 5 * x + 0.25, fallback=np.zeros(1), priority=[0], offset=0.25)
    assert fit.values == pytest.approx([5.0])


def test_a_negative_intercept_is_clamped_and_the_slope_refitted_through_zero() -> None:
    """t = 2x - 0.5 at x = 1, 2, 4 wants intercept -0.5. Clamped at 0, the slope minimising
    sum((a x / t - 1)^2) is a = sum(x / t) / sum(x^2 / t^2)."""
    x = np.array([1.0, 2.0, 4.0])
    t = 2 * x - 0.5
    fit = relative_nnls(np.column_stack([x, np.ones(3)]), t, fallback=np.zeros(2), priority=[0, 1])
    expected = np.sum(x / t) / np.sum(x**2 / t**2)
    assert fit.values == pytest.approx([expected, 0.0])


def test_a_column_the_data_cannot_separate_keeps_its_fallback() -> None:
    """Columns 1 and 2 are equal: only the first in priority order is identified, the second keeps
    its fallback 0.5 and the first absorbs the rest: t = 2x + 3 -> 2.5 + 0.5."""
    x = np.array([1.0, 2.0, 3.0, 5.0])
    design = np.column_stack([x, np.ones(4), np.ones(4)])
    fit = relative_nnls(design, 2 * x + 3, fallback=np.array([0.0, 0.0, 0.5]), priority=[0, 1, 2])
    assert fit.identified.tolist() == [True, True, False]
    assert fit.values == pytest.approx([2.0, 2.5, 0.5])
    assert identifiable(design, [2, 1, 0]) == [2, 0]


def test_minimise_scalar_finds_an_interior_minimum() -> None:
    fit = minimise_scalar(lambda v: (np.log(v) - np.log(0.3)) ** 2, 1e-3, 1.0)
    assert fit.value == pytest.approx(0.3, rel=1e-6) and not fit.flat_towards_high


def test_a_flat_objective_bounds_the_value_from_below_only() -> None:
    """Worse below 0.2, flat above: the data only say "at least 0.2"."""
    def objective(v: float) -> float:
        return 0.01 + max(0.0, np.log(0.2) - np.log(v))

    fit = minimise_scalar(objective, 1e-3, 1.0)
    assert fit.flat_towards_high
    assert fit.lowest_as_good(objective, 1e-3) == pytest.approx(0.2, rel=2e-3)  # within the 0.1% tolerance


def test_relative_rms_and_significant_digits() -> None:
    assert relative_rms(np.array([1.1, 0.9]), np.array([1.0, 1.0])) == pytest.approx(0.1)
    assert significant(123456.0) == 123500.0
    assert significant(0.000123456) == pytest.approx(0.0001235, rel=1e-12)
    assert significant(0.0) == 0.0
