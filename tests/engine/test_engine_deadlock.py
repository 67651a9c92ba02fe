"""Plans that cannot finish raise DeadlockError naming what waits for what; bad plans raise MoesimError."""

import pytest

from moesim.engine import simulate_plan
from moesim.engine.deadlock import Blocked, deadlock_error
from moesim.errors import DeadlockError, MoesimError
from moesim.plan import StreamKind

COMPUTE, COMM, DP_COMM = StreamKind.COMPUTE, StreamKind.COMM, StreamKind.DP_COMM


def test_a_dependency_cycle_across_streams(story):
    s = story()
    s.compute("a", 1.0, deps=[1])
    s.collective("b", deps=[0])
    with pytest.raises(DeadlockError) as caught:
        s.run()
    message = str(caught.value)
    assert "2 streams are blocked" in message
    assert "rank 0 compute: task 0 a waits for task 1 b (blocked)" in message
    assert "rank 0 comm: task 1 b waits for task 0 a (blocked)" in message


def test_a_dependency_on_a_task_behind_on_its_own_stream(story):
    s = story()
    s.compute("ready", 1.0)
    s.compute("first", 1.0, deps=[2])
    s.compute("second", 1.0)
    with pytest.raises(DeadlockError) as caught:
        s.run()
    assert "rank 0 compute: task 1 first waits for task 2 second (not started)" in str(caught.value)


def test_a_cycle_through_collectives_blocks_every_rank_at_the_dependency(story):
    # p depends on q, q on r, r on p. A rank outside a group still waits for the task's deps, so
    # every rank stops at a dependency; SPMD ranks reach a rendezvous together or not at all.
    s = story(num_ranks=3)
    s.collective("p", groups=((0, 1),), stream=COMM, deps=[1])
    s.collective("q", groups=((1, 2),), stream=DP_COMM, deps=[2])
    s.collective("r", groups=((0, 2),), stream=COMPUTE, deps=[0])
    with pytest.raises(DeadlockError) as caught:
        s.run(symmetric=False)
    message = str(caught.value)
    assert "9 streams are blocked" in message and "rendezvous" not in message
    assert "rank 2 comm: task 0 p waits for task 1 q (blocked)" in message


def test_a_member_missing_at_a_rendezvous_is_named(story):
    s = story(num_ranks=12)
    s.collective("dispatch", groups=(tuple(range(12)),))
    plan = s.plan()
    blocked = [
        Blocked(rank=0, stream=COMM, task=0, absent=(1,)),
        Blocked(rank=2, stream=COMM, task=0, absent=tuple(range(3, 12))),
    ]
    message = str(deadlock_error(plan, blocked))
    assert "rank 0 comm: task 0 dispatch waits for rank 1 at the rendezvous" in message
    assert "rank 2 comm: task 0 dispatch waits for ranks 3, 4, 5, 6, 7, 8, 9, 10 and 1 more at" in message


def test_the_message_lists_ten_blocked_streams_then_counts_the_rest(story):
    s = story(num_ranks=6)
    s.compute("a", 1.0, deps=[1])
    s.compute("b", 1.0, stream=COMM, deps=[0])
    with pytest.raises(DeadlockError) as caught:
        s.run(symmetric=False)
    message = str(caught.value)
    assert "12 streams are blocked" in message
    assert message.count(" waits for ") == 10
    assert message.endswith("; and 2 more")
    assert "rank 4 comm" in message and "rank 5" not in message


def test_a_deadlock_after_progress_names_only_the_blocked_tasks(story):
    s = story()
    s.compute("done_first", 1.0)
    s.compute("stuck", 1.0, deps=[3])
    s.compute("fine", 1.0, stream=COMM)
    s.compute("never", 1.0, stream=COMM, deps=[1])
    with pytest.raises(DeadlockError) as caught:
        s.run()
    message = str(caught.value)
    assert "done_first" not in message and "fine" not in message
    assert "task 1 stuck waits for task 3 never (blocked)" in message


def test_an_unknown_dependency_id_is_a_user_error_before_simulating(story):
    s = story()
    s.compute("a", 1.0, deps=[99])
    with pytest.raises(MoesimError, match="deps contains 99, not a task id of this plan"):
        s.run()


def test_a_cost_model_for_another_cluster_size_is_a_user_error(story):
    s = story(num_ranks=2)
    s.compute("a", 1.0)
    plan = s.plan()
    s.cost.num_ranks = 4
    with pytest.raises(MoesimError, match="num_ranks"):
        simulate_plan(plan, s.cost)


def test_a_negative_slowdown_is_a_user_error(story):
    s = story(slowdown=-0.5)
    s.compute("a", 1.0)
    with pytest.raises(MoesimError, match="compute_slowdown"):
        s.run()


def test_a_group_member_outside_the_job_is_a_user_error(story):
    s = story(num_ranks=2)
    s.collective("a2a", groups=((0, 5),))
    with pytest.raises(MoesimError, match="rank 5"):
        s.run()


@pytest.mark.parametrize("groups", [((0, 1), (1, 2)), ((0, 0, 1),)])
def test_a_rank_in_two_places_of_one_collective_is_a_user_error(story, groups):
    s = story(num_ranks=3)
    s.collective("a2a", groups=groups)
    with pytest.raises(MoesimError, match="appears more than once"):
        s.run(symmetric=False)
