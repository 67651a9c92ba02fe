import pytest

from moesim.errors import MoesimError
from moesim.schedules import get_schedule, registered


def test_sequential_is_registered_with_a_description():
    assert "sequential" in registered()
    assert registered()["sequential"].description


def test_unknown_schedule_names_the_choices():
    with pytest.raises(MoesimError, match="unknown schedule 'fifo': choose one of .*sequential"):
        get_schedule("fifo")


def test_unknown_knob_is_rejected():
    with pytest.raises(MoesimError, match="schedule.degree"):
        get_schedule("sequential").make_config({"degree": 2})
