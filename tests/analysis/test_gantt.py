"""Gantt charts: real PNGs, rows per (rank, stream), the layer window, no pyplot global state."""

from __future__ import annotations

import pytest

from moesim.analysis.gantt import Category, category, plot_timeline, plot_timelines
from moesim.errors import MoesimError
from moesim.plan import StreamKind
from moesim.workload.ops import OpKind, Phase

C, A, D = StreamKind.COMPUTE, StreamKind.COMM, StreamKind.DP_COMM
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MS = 1e-3


@pytest.fixture
def layered(make_span, make_timeline):
    """Rank 0 (and a copy shifted by 1 ms on rank 1), in ms: layer 0 [0,1], layer 1 [1,3], layer 2 [3,6]
    on compute; an all-reduce with no layer [2,4] on dp_comm; an all-to-all of layer 1 [1.5,2.5] on comm."""
    spans = []
    for rank, shift in ((0, 0.0), (1, 1.0)):
        spans += [
            make_span(rank, C, (0 + shift) * MS, (1 + shift) * MS, task=0, layer=0),
            make_span(rank, C, (1 + shift) * MS, (3 + shift) * MS, task=1, layer=1,
                      phase=Phase.BACKWARD_INPUT),
            make_span(rank, A, (1.5 + shift) * MS, (2.5 + shift) * MS, task=2, layer=1),
            make_span(rank, D, (2 + shift) * MS, (4 + shift) * MS, task=3, layer=None),
            make_span(rank, C, (3 + shift) * MS, (6 + shift) * MS, task=4, layer=2,
                      phase=Phase.BACKWARD_WEIGHT),
        ]
    return make_timeline(spans)


def bar_count(ax):
    return sum(len(collection.get_paths()) for collection in ax.collections)


def test_writes_a_real_png(layered, tmp_path):
    target = tmp_path / "gantt.png"
    figure = plot_timeline(layered, path=target)
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert figure.axes  # a Figure came back, not None


def test_default_shows_one_row_per_stream_of_the_first_simulated_rank(layered):
    ax = plot_timeline(layered).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["rank 0 · compute", "rank 0 · comm", "rank 0 · dp_comm"]
    assert bar_count(ax) == 5
    assert ax.get_xlim() == pytest.approx((0.0, 6.0))
    assert ax.get_xlabel() == "time (ms)"


def test_several_ranks_get_their_own_rows(layered):
    ax = plot_timeline(layered, ranks=[1, 0]).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "rank 1 · compute" and labels[3] == "rank 0 · compute"
    assert bar_count(ax) == 10


def test_layer_filter_shows_the_forward_and_backward_windows_side_by_side(layered):
    forward, backward = plot_timeline(layered, layers=(1, 1)).axes
    # layer 1: its all-to-all [1.5, 2.5] is forward, its compute [1, 3] is backward dX
    assert forward.get_title(loc="left") == "forward, layers 1..1"
    assert forward.get_xlim() == pytest.approx((1.5, 2.5))
    # inside [1.5, 2.5] ms: the all-to-all, layer 1's compute, the layer-less all-reduce [2, 4]
    assert bar_count(forward) == 3
    assert backward.get_title(loc="left") == "backward, layers 1..1"
    assert backward.get_xlim() == pytest.approx((1.0, 3.0))
    # inside [1, 3] ms: the same three; layer 0 ends and layer 2 begins exactly at the edges
    assert bar_count(backward) == 3
    # the backward window follows dX spans: layer 2's only span is a dW, which may run anywhere
    with pytest.raises(MoesimError, match="layers"):
        plot_timeline(layered, layers=(2, 2))


def test_a_layer_range_cannot_go_into_a_single_given_axes(layered):
    from matplotlib.figure import Figure

    with pytest.raises(MoesimError, match="ax"):
        plot_timeline(layered, layers=(1, 1), ax=Figure().subplots())


def test_an_empty_or_reversed_layer_range_is_an_error(layered):
    with pytest.raises(MoesimError, match="layers"):
        plot_timeline(layered, layers=(5, 7))
    with pytest.raises(MoesimError, match="layers"):
        plot_timeline(layered, layers=(2, 1))


def test_unknown_or_too_many_ranks_are_errors(layered):
    with pytest.raises(MoesimError, match="ranks"):
        plot_timeline(layered, ranks=[7])
    with pytest.raises(MoesimError, match="ranks"):
        plot_timeline(layered, ranks=[])


def test_drawing_into_a_given_axes_and_leaving_pyplot_alone(layered):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    before = plt.get_fignums()
    host = Figure()
    left, right = host.subplots(1, 2)
    returned = plot_timeline(layered, ax=right, title="mine")
    assert returned is host
    assert bar_count(left) == 0 and bar_count(right) == 5
    assert right.get_title() == "mine"
    plot_timelines({"a": layered})
    assert plt.get_fignums() == before


def test_categories_follow_kind_and_phase(make_span):
    assert category(make_span(0, A, 0, 1)) is Category.ALL_TO_ALL
    assert category(make_span(0, D, 0, 1)) is Category.GRAD_ALL_REDUCE
    assert category(make_span(0, C, 0, 1)) is Category.FORWARD
    assert category(make_span(0, C, 0, 1, phase=Phase.BACKWARD_INPUT)) is Category.BACKWARD_INPUT
    assert category(make_span(0, C, 0, 1, phase=Phase.BACKWARD_WEIGHT)) is Category.BACKWARD_WEIGHT
    assert category(make_span(0, C, 0, 1, kind=OpKind.OPTIMIZER, phase=Phase.OPTIMIZER)) is Category.OPTIMIZER
    assert category(make_span(0, A, 0, 1, kind=OpKind.ALL_GATHER)) is Category.OTHER


def test_comparison_stacks_one_row_per_timeline_on_one_scale(layered, make_span, make_timeline, tmp_path):
    short = make_timeline([make_span(0, C, 10 * MS, 12 * MS, layer=1, phase=Phase.BACKWARD_INPUT)])
    target = tmp_path / "compare.png"
    figure = plot_timelines({"long": layered, "short": short}, layers=(1, 1), path=target)
    long_fwd, long_bwd, short_fwd, short_bwd = figure.axes
    assert long_fwd.get_title(loc="left") == "long: forward, layers 1..1"
    assert short_bwd.get_title(loc="left") == "short: backward, layers 1..1"
    assert not short_fwd.axison  # "short" has no forward span in layer 1
    # each panel starts at its own window; a column shares its longest window (2 ms), so bars compare
    assert long_bwd.get_xlim() == pytest.approx((1.0, 3.0))
    assert short_bwd.get_xlim() == pytest.approx((10.0, 12.0))
    assert long_fwd.get_xlim() == pytest.approx((1.5, 2.5))
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(MoesimError, match="layers"):
        plot_timelines({"long": layered, "short": short}, layers=(2, 2))
