"""TEACHER_FAULT is parsed once, strictly: a typo in a fault test must fail loudly, not make the
fault silently never fire (the test would then pass for the wrong reason)."""
import pytest

from common.faults import Faults, FaultSpecError


def test_parse_names_and_numbers():
    f = Faults.parse("kill_at_step:3, hold_stop,kill_at_step:7,kill_after_manifest:2")
    assert f.fires("kill_at_step", 3) and f.fires("kill_at_step", 7) and not f.fires("kill_at_step", 4)
    assert f.fires("kill_after_manifest", 2) and not f.fires("kill_after_epoch", 2)
    assert f.on("hold_stop") and not f.on("zero_train_metrics")
    assert f and not Faults.parse("")


@pytest.mark.parametrize("spec", ["kill_at_stp:3", "kill_at_step", "kill_at_step:x", "hold_stop_now"])
def test_a_bad_spec_is_an_error(spec):
    with pytest.raises(FaultSpecError, match="TEACHER_FAULT"):
        Faults.parse(spec)


def test_hold_stop_waits_for_the_second_signal_or_the_deadline():
    seen = iter([1, 1, 2])
    Faults.parse("hold_stop").hold_stop(lambda: next(seen), deadline_s=5)  # returns at the third poll
    Faults.parse("").hold_stop(lambda: pytest.fail("inert without the fault"))


def test_raise_at_step_raises_only_at_its_step():
    f = Faults.parse("raise_at_step:5")
    f.after_step(4)
    with pytest.raises(RuntimeError, match="raise_at_step:5"):
        f.after_step(5)
