"""Small least-squares tools for the fit: relative error, non-negative unknowns, identifiability.

Measured times span decades (a 10 us kernel and a 10 ms one), so every fit minimises the relative
error ``sum(((predicted - measured) / measured) ** 2)``: each sample counts the same whatever its size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_RANK_TOLERANCE = 1e-6   # singular values below this share of the largest are "no new information"
_FLAT_TOLERANCE = 1e-3   # objectives within 0.1% of each other cannot tell two values apart
_GRID_POINTS = 121
_REFINEMENTS = 4
_BISECTIONS = 50


@dataclass(frozen=True, slots=True)
class LinearFit:
    """``values[j]`` for each column j; ``identified[j]`` False where the data could not tell it from
    the other columns (its value is then the caller's fallback)."""

    values: np.ndarray
    identified: np.ndarray


def identifiable(design: np.ndarray, priority: Sequence[int]) -> list[int]:
    """Columns of ``design`` the data can pin down, chosen greedily in ``priority`` order: a column is
    kept when it raises the rank of the (column-normalised) design of the columns kept so far."""
    norms = np.linalg.norm(design, axis=0)
    scaled = design / np.where(norms > 0, norms, 1.0)
    chosen: list[int] = []
    for column in priority:
        if norms[column] == 0:
            continue
        trial = scaled[:, [*chosen, column]]
        singular = np.linalg.svd(trial, compute_uv=False)
        if singular[-1] > _RANK_TOLERANCE * singular[0]:
            chosen.append(column)
    return chosen


def relative_nnls(design: np.ndarray, measured: np.ndarray, fallback: np.ndarray, priority: Sequence[int],
                  offset: np.ndarray | float = 0.0) -> LinearFit:
    """Non-negative ``x`` minimising the relative error of ``design @ x + offset`` against ``measured``.

    Columns the data cannot identify (see ``identifiable``) are held at ``fallback`` and their share
    subtracted from the measurement. The rest are solved exactly under ``x >= 0`` by trying every
    subset of them free (the others at 0): at most a handful of unknowns, so 2^n small solves.
    The caller guarantees ``measured > 0``.
    """
    design = np.asarray(design, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    assert design.ndim == 2 and design.shape[0] == measured.shape[0], "one design row per measurement"
    assert np.all(measured > 0), "relative error needs positive measurements"
    free = identifiable(design, priority)
    fixed = [j for j in range(design.shape[1]) if j not in free]
    values = np.array(fallback, dtype=np.float64)
    target = (measured - offset - design[:, fixed] @ values[fixed]) / measured
    weighted = design / measured[:, None]
    best: tuple[float, np.ndarray, tuple[int, ...]] | None = None
    for size in range(len(free), -1, -1):
        for subset in itertools.combinations(free, size):
            x = np.linalg.lstsq(weighted[:, list(subset)], target, rcond=None)[0] if subset else np.zeros(0)
            if np.any(x < 0):
                continue
            residual = float(np.sum((weighted[:, list(subset)] @ x - target) ** 2)) if subset else float(
                np.sum(target**2))
            if best is None or residual < best[0] - 1e-15:
                best = (residual, x, subset)
    assert best is not None, "the empty subset is always feasible"
    _, x, subset = best
    values[free] = 0.0
    values[list(subset)] = x
    identified = np.zeros(design.shape[1], dtype=bool)
    identified[free] = True
    return LinearFit(values=values, identified=identified)


@dataclass(frozen=True, slots=True)
class ScalarFit:
    """The best value found, the objective there, and the objective at the search's upper end."""

    value: float
    objective: float
    objective_at_high: float

    def as_good(self, objective_value: float) -> bool:
        """True when ``objective_value`` cannot be told apart from the best objective."""
        return objective_value <= self.objective * (1 + _FLAT_TOLERANCE) + 1e-12

    @property
    def flat_towards_high(self) -> bool:
        """True when the upper end explains the data as well as the best value: the data only bound
        the parameter from below (e.g. a memory-bound sweep says nothing about a FLOP roof above it)."""
        return self.as_good(self.objective_at_high)

    def lowest_as_good(self, objective: Callable[[float], float], low: float) -> float:
        """The smallest value in ``[low, value]`` whose objective is as good as the best, by bisection
        on a log scale: the caller guarantees the objective only worsens going down from ``value``."""
        if self.as_good(objective(low)):
            return low
        below, good = np.log(low), np.log(self.value)
        for _ in range(_BISECTIONS):
            middle = 0.5 * (below + good)
            if self.as_good(objective(float(np.exp(middle)))):
                good = middle
            else:
                below = middle
        return float(np.exp(good))


def minimise_scalar(objective: Callable[[float], float], low: float, high: float) -> ScalarFit:
    """Minimise ``objective`` over ``[low, high]`` (both > 0) by log-spaced grids, each refined around
    the best point of the last: robust to the kinks a roofline ``max`` puts in the objective."""
    assert 0 < low < high, "search bounds must be positive and ordered"
    lo, hi = np.log(low), np.log(high)
    best_x, best_f = high, objective(high)
    for _ in range(_REFINEMENTS):
        grid = np.linspace(lo, hi, _GRID_POINTS)
        values = [objective(float(np.exp(g))) for g in grid]
        i = int(np.argmin(values))
        if values[i] < best_f:
            best_x, best_f = float(np.exp(grid[i])), values[i]
        step = grid[1] - grid[0]
        lo, hi = max(np.log(low), grid[i] - step), min(np.log(high), grid[i] + step)
    return ScalarFit(value=best_x, objective=best_f, objective_at_high=objective(high))


def relative_rms(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Root mean square of ``predicted / measured - 1``."""
    return float(np.sqrt(np.mean((np.asarray(predicted) / np.asarray(measured) - 1.0) ** 2)))
