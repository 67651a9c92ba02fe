"""Gantt charts of a Timeline: one row per (rank, stream), bars coloured by what the span does.

Figures are built directly (``matplotlib.figure.Figure`` on an Agg canvas) and never touch
pyplot's global state, so plotting is safe in notebooks, tests and worker threads alike.
matplotlib is imported on first use: ``import moesim.analysis`` stays light for the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from moesim.analysis.chrome_trace import stream_tid
from moesim.errors import MoesimError
from moesim.plan import StreamKind
from moesim.timeline import Span, Timeline
from moesim.units import MS
from moesim.workload.ops import OpKind, Phase

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_RANKS = 8   # rows grow with ranks x streams; beyond a handful a Gantt stops being readable
DPI = 120
_ROW_HEIGHT_IN = 0.45
_BAR_HEIGHT = 0.8


class Category(StrEnum):
    """What a bar shows; the legend's entries, in this order."""

    FORWARD = "forward compute"
    BACKWARD_INPUT = "backward dX"
    BACKWARD_WEIGHT = "backward dW"
    ALL_TO_ALL = "all-to-all"
    GRAD_ALL_REDUCE = "gradient all-reduce"
    OPTIMIZER = "optimizer"
    OTHER = "other"


COLOURS: Mapping[Category, str] = {
    Category.FORWARD: "#4C72B0",
    Category.BACKWARD_INPUT: "#55A868",
    Category.BACKWARD_WEIGHT: "#8CC084",
    Category.ALL_TO_ALL: "#DD8452",
    Category.GRAD_ALL_REDUCE: "#C44E52",
    Category.OPTIMIZER: "#8172B3",
    Category.OTHER: "#999999",
}

_COMPUTE_PHASES = {
    Phase.FORWARD: Category.FORWARD,
    Phase.BACKWARD_INPUT: Category.BACKWARD_INPUT,
    Phase.BACKWARD_WEIGHT: Category.BACKWARD_WEIGHT,
    Phase.OPTIMIZER: Category.OPTIMIZER,
}


def category(span: Span) -> Category:
    """Collectives by kind (gradient buckets also by phase), compute by phase (a bucket's copies: other)."""
    if span.kind is OpKind.ALL_TO_ALL:
        return Category.ALL_TO_ALL
    if span.kind is OpKind.ALL_REDUCE or (span.phase is Phase.GRAD_SYNC and span.kind.is_collective):
        return Category.GRAD_ALL_REDUCE
    if span.kind.is_collective:
        return Category.OTHER
    return _COMPUTE_PHASES.get(span.phase, Category.OTHER)


Window = tuple[str, tuple[float, float]]  # a panel's label and its (start, end) in seconds

# The backward window follows the input-gradient chain (dX ops and the backward all-to-alls): weight
# gradients may run far from their layer (Lancet moves them), and are drawn wherever they fall.
_PASSES = (
    ("forward", frozenset({Phase.FORWARD})),
    ("backward", frozenset({Phase.BACKWARD_INPUT})),
)


def layer_windows(timeline: Timeline, ranks: Sequence[int], layers: tuple[int, int]) -> list[Window]:
    """The forward and the backward time window of layers ``a..b`` (inclusive) on ``ranks``.

    A layer's forward and backward run far apart in an iteration, so each pass gets its own window
    (backward: from the layers' first to last dX or backward all-to-all); a pass with no span in the
    range is left out.
    """
    low, high = layers
    if low > high:
        raise MoesimError(f"layers=({low}, {high}): the first layer must not exceed the last")
    chosen = [s for s in timeline.spans
              if s.rank in ranks and s.layer is not None and low <= s.layer <= high]
    windows = []
    for label, phases in _PASSES:
        in_pass = [s for s in chosen if s.phase in phases]
        if in_pass:
            windows.append((f"{label}, layers {low}..{high}",
                            (min(s.start for s in in_pass), max(s.end for s in in_pass))))
    if not windows:
        raise MoesimError(f"layers=({low}, {high}): no span of rank(s) {', '.join(map(str, ranks))} "
                          f"has a layer in {low}..{high}")
    return windows


def plot_timeline(
    timeline: Timeline,
    *,
    ranks: Sequence[int] | None = None,
    layers: tuple[int, int] | None = None,
    path: str | Path | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Gantt chart of ``ranks`` (default: the first simulated rank; at most ``MAX_RANKS``).

    ``layers=(a, b)`` shows the forward and the backward window of layers a..b side by side, on one
    time scale, with every span inside them. Draws into ``ax`` when given (one window only: the whole
    iteration; returns ax's figure); writes the figure to ``path`` when given (PNG unless the suffix
    names another format matplotlib writes).
    """
    chosen = _check_ranks(timeline, ranks)
    windows = _windows(timeline, chosen, layers)
    if ax is not None:
        if len(windows) > 1:
            raise MoesimError("ax: a layer range draws a forward and a backward panel; omit ax or layers")
        drawn = _draw(ax, timeline, chosen, windows[0][1], _span(windows[0]))
        ax.set_title(title if title is not None else _default_title(timeline, layers))
        _add_legend(ax, drawn)
        figure = _root_figure(ax)
    else:
        figure = _new_figure(rows=len(_rows(timeline, chosen)), panels=1)
        grid = figure.add_gridspec(1, len(windows), width_ratios=[_span(w) or 1.0 for w in windows])
        drawn = set()
        for column, window in enumerate(windows):
            cell = figure.add_subplot(grid[0, column])
            drawn |= _draw(cell, timeline, chosen, window[1], _span(window), labels=column == 0)
            if len(windows) > 1:
                cell.set_title(window[0], loc="left", fontsize="medium")
        figure.suptitle(title if title is not None else _default_title(timeline, layers))
        _add_legend(figure.axes[-1], drawn)
    _save(figure, path)
    return figure


def plot_timelines(
    timelines: Mapping[str, Timeline],
    *,
    layers: tuple[int, int] | None = None,
    path: str | Path | None = None,
) -> Figure:
    """One row of Gantt panels per timeline (its first simulated rank), for comparing schedules.

    With ``layers`` each row has a forward and a backward panel. Each panel starts at its own window
    start; panels of one column share a time scale (that column's longest window), so bar lengths
    compare across schedules.
    """
    if not timelines:
        raise MoesimError("timelines: need at least one timeline to plot")
    chosen = {label: _check_ranks(t, None) for label, t in timelines.items()}
    windows = {label: dict(_windows(t, chosen[label], layers)) for label, t in timelines.items()}
    columns = list(dict.fromkeys(name for per in windows.values() for name in per))
    widths = [max(per[name][1] - per[name][0] for per in windows.values() if name in per) for name in columns]
    heights = [max(len(_rows(t, chosen[label])), 1) for label, t in timelines.items()]
    figure = _new_figure(rows=sum(heights), panels=len(timelines))
    grid = figure.add_gridspec(len(timelines), len(columns), height_ratios=heights,
                               width_ratios=[w or 1.0 for w in widths])
    drawn: set[Category] = set()
    for row, (label, timeline) in enumerate(timelines.items()):
        for column, name in enumerate(columns):
            cell = figure.add_subplot(grid[row, column])
            window = windows[label].get(name)
            if window is None:
                cell.set_axis_off()
                continue
            drawn |= _draw(cell, timeline, chosen[label], window, widths[column], labels=column == 0)
            heading = label if len(columns) == 1 else f"{label}: {name}"
            cell.set_title(heading, loc="left", fontsize="small")
    _add_legend(figure.axes[len(columns) - 1], drawn)
    _save(figure, path)
    return figure


def _windows(timeline: Timeline, ranks: Sequence[int], layers: tuple[int, int] | None) -> list[Window]:
    if layers is None:
        return [("iteration", _full_window(timeline, ranks))]
    return layer_windows(timeline, ranks, layers)


def _span(window: Window) -> float:
    low, high = window[1]
    return high - low


def _check_ranks(timeline: Timeline, ranks: Sequence[int] | None) -> list[int]:
    simulated = list(timeline.ranks)
    if not simulated:
        raise MoesimError("timeline.represents: empty; there is no rank to plot")
    if ranks is None:
        return simulated[:1]
    chosen = list(dict.fromkeys(ranks))
    unknown = [r for r in chosen if r not in timeline.represents]
    if unknown:
        listed = ", ".join(map(str, simulated[:16])) + (" ..." if len(simulated) > 16 else "")
        raise MoesimError(f"ranks: {unknown} are not simulated ranks of this timeline (simulated: {listed})")
    if not chosen or len(chosen) > MAX_RANKS:
        raise MoesimError(f"ranks: give 1 to {MAX_RANKS} ranks, got {len(chosen)}")
    return chosen


def _full_window(timeline: Timeline, ranks: Sequence[int]) -> tuple[float, float]:
    spans = [s for s in timeline.spans if s.rank in ranks]
    return min((s.start for s in spans), default=0.0), max((s.end for s in spans), default=0.0)


def _rows(timeline: Timeline, ranks: Sequence[int]) -> list[tuple[int, StreamKind]]:
    used = {(s.rank, s.stream) for s in timeline.spans if s.rank in ranks}
    return sorted(used, key=lambda row: (ranks.index(row[0]), stream_tid(row[1])))


def _draw(ax: Axes, timeline: Timeline, ranks: Sequence[int], window: tuple[float, float],
          width: float, *, labels: bool = True) -> set[Category]:
    """Bars of the spans that overlap ``window``, x axis in ms from ``window[0]`` over ``width``
    seconds (at least the window); returns the categories drawn."""
    low, high = window
    rows = _rows(timeline, ranks)
    row_of = {row: index for index, row in enumerate(rows)}
    bars: dict[tuple[int, Category], list[tuple[float, float]]] = {}
    for span in timeline.spans:
        row = row_of.get((span.rank, span.stream))
        if row is not None and _overlaps(span, low, high):
            bars.setdefault((row, category(span)), []).append((span.start / MS, span.duration / MS))
    for (row, cat), ranges in sorted(bars.items(), key=lambda item: (item[0][0], item[0][1].value)):
        ax.broken_barh(ranges, (row - _BAR_HEIGHT / 2, _BAR_HEIGHT), facecolors=COLOURS[cat],
                       edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(rows)), [f"rank {rank} · {stream.value}" for rank, stream in rows] if labels else [])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    shown_ms = max(width, high - low) / MS
    ax.set_xlim(low / MS, low / MS + (shown_ms if shown_ms > 0 else 1.0))
    ax.set_xlabel("time (ms)")
    ax.grid(axis="x", linewidth=0.3, alpha=0.6)
    return {cat for _, cat in bars}


def _overlaps(span: Span, low: float, high: float) -> bool:
    """Shares time with [low, high]; a zero-length window or span counts when it lies inside."""
    if span.start == span.end or low == high:
        return span.start <= high and span.end >= low
    return span.start < high and span.end > low


def _add_legend(ax: Axes, drawn: set[Category]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=COLOURS[c], label=c.value) for c in Category if c in drawn]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small",
                  frameon=False)


def _root_figure(ax: Axes) -> Figure:
    from matplotlib.figure import Figure

    figure = ax.figure
    return figure if isinstance(figure, Figure) else figure.figure


def _new_figure(rows: int, panels: int) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = 1.0 + panels * 0.9 + max(rows, 1) * _ROW_HEIGHT_IN
    figure = Figure(figsize=(12.0, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path | None) -> None:
    if path is None:
        return
    target = Path(path)
    suffix = target.suffix.lstrip(".").lower()
    fmt = suffix if suffix in figure.canvas.get_supported_filetypes() else "png"
    figure.savefig(target, dpi=DPI, format=fmt)


def _default_title(timeline: Timeline, layers: tuple[int, int] | None) -> str:
    name = timeline.schedule or "timeline"
    where = f", layers {layers[0]}..{layers[1]}" if layers is not None else ""
    return f"{name} ({timeline.source}{where})"
