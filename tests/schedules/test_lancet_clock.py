"""The dW pass's clock: hand-timed list schedules of program orders with DDP buckets."""

import pytest

from moesim.schedules.lancet_clock import BackwardClock, GradSyncCost
from moesim.workload.buckets import BucketSpec
from moesim.workload.ops import Op, OpGraph, OpKind, Phase

FWD, DX, DW = Phase.FORWARD, Phase.BACKWARD_INPUT, Phase.BACKWARD_WEIGHT


def _graph():
    """x -> A (all-to-all) -> y; dense gradients g1, g2 (after x), expert gradient e (after y)."""
    specs = [("x", OpKind.MATMUL, FWD, (), 0.0, False), ("A", OpKind.ALL_TO_ALL, DX, (0,), 0.0, False),
             ("g1", OpKind.MATMUL, DW, (0,), 6.0, False), ("g2", OpKind.MATMUL, DW, (0,), 6.0, False),
             ("y", OpKind.MATMUL, DX, (1,), 0.0, False), ("e", OpKind.MATMUL, DW, (4,), 3.0, True)]
    ops = tuple(Op(id=i, name=n, role=n, kind=k, phase=p, layer=0, deps=d, param_bytes=b, expert=x)
                for i, (n, k, p, d, b, x) in enumerate(specs))
    return OpGraph(ops=ops, num_ranks=2, num_layers=1, moe_layers=(0,))


SECONDS = [1.0, 3.0, 1.0, 1.0, 2.0, 1.0]  # x, A, g1, g2, y, e
SPEC = BucketSpec(cap_bytes=10.0, grad_bytes=4, groups={False: ((0, 1),), True: ((0, 1),)})


def _clock():
    # an all-reduce takes 1 s per 4 bytes
    return BackwardClock(_graph(), SECONDS, GradSyncCost(SPEC, lambda expert, size: size / 4))


def test_program_order_by_hand():
    clock = _clock()
    # x 0-1; A 1-4 (comm); g1 1-2; g2 2-3; y waits for A: 4-6; e 6-7.
    # Dense bucket: g1 (6 B) then g2 (12 B >= 10) closes at 3 -> all-reduce 3-6. Expert bucket e (3 B) is
    # open at the end: ready at 7, 0.75 s -> 7.75.
    assert clock.keep([0, 1, 2, 3, 4, 5]) == pytest.approx((7.75, 7.0))
    assert clock.idle(1) == pytest.approx(1.0)  # y waited 3 -> 4 for A


def test_moving_gradients_behind_the_all_to_all_by_hand():
    clock = _clock()
    # Put g2 after y:
    # x 0-1, g1 1-2, y 4-6 (waits for A), g2 6-7, e 7-8; the dense bucket closes at 7 -> 7-10, and the
    # expert bucket, ready at 8, waits for it: 10-10.75.
    assert clock.keep([0, 1, 2, 4, 3, 5]) == pytest.approx((10.75, 8.0))
    assert clock.idle(1) == pytest.approx(2.0)


def test_a_trial_leaves_the_reference_as_it_was():
    clock = _clock()
    reference = [0, 1, 2, 3, 4, 5]
    kept = clock.keep(reference)
    assert clock.trial([0, 1, 2, 4, 3, 5], start=3) == pytest.approx((10.75, 8.0))
    assert clock.kept == kept and clock.idle(1) == pytest.approx(1.0)
    # a later trial from a later index reads the reference's times, not the first trial's
    fresh = _clock()
    fresh.keep(reference)
    assert clock.trial([0, 1, 2, 3, 5, 4], start=4) == fresh.trial([0, 1, 2, 3, 5, 4], start=4)
    # and keep from an index replays only the tail, with the same result as a full replay
    assert clock.keep([0, 1, 3, 2, 4, 5], start=2) == _clock().keep([0, 1, 3, 2, 4, 5])
