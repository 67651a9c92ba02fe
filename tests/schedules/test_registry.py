import pytest

from moesim.errors import MoesimError
from moesim.schedules import get_schedule, registered


def test_every_schedule_is_discovered_listed_with_its_description_and_plans_under_its_name(capsys):
    from moesim.api import scenario
    from moesim.cli import main

    schedules = registered()
    assert list(schedules) == ["sequential", "tutel", "lancet"]  # the baseline first
    assert main(["list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    tiny = scenario("tiny-moe-a", "cpu-loopback", 1, {"model.num_layers": 2})
    for name, policy in schedules.items():
        assert policy.name == name and "\n" not in policy.description and 10 < len(policy.description) <= 100
        assert sum(line.split() == [name, *policy.description.split()] for line in listed) == 1, name
        config = policy.make_config()
        assert type(config) is policy.config and config == policy.config()
        assert policy.plan_with(tiny.graph, tiny.cost).schedule == name


def test_unknown_schedule_names_the_choices():
    with pytest.raises(MoesimError, match="unknown schedule 'fifo': choose one of .*sequential"):
        get_schedule("fifo")


def test_unknown_knob_is_rejected():
    with pytest.raises(MoesimError, match="schedule.degree"):
        get_schedule("sequential").make_config({"degree": 2})
