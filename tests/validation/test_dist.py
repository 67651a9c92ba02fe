"""Ranks pin themselves to cores of their own, in blocks, and leave the affinity alone where blocks do not fit."""

import os

import pytest

pytest.importorskip("torch")

from moesim.validation.dist import pin_cores  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")


@pytest.fixture
def restore_affinity():
    before = os.sched_getaffinity(0)
    yield sorted(before)
    os.sched_setaffinity(0, before)


def test_each_local_rank_gets_its_own_block_of_cores(restore_affinity):
    allowed = restore_affinity
    last = len(allowed) - 1
    assert pin_cores(last, len(allowed), 1) == (allowed[last],)
    assert os.sched_getaffinity(0) == {allowed[last]}


def test_blocks_that_do_not_fit_leave_the_affinity_alone(restore_affinity):
    allowed = restore_affinity
    assert pin_cores(0, len(allowed) + 1, 1) is None
    assert pin_cores(0, 1, len(allowed) + 1) is None
    assert pin_cores(0, 1, 0) is None
    assert sorted(os.sched_getaffinity(0)) == allowed
