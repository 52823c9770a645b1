"""The MMS endpoint's pure model record (relevent/protocols/mms/book.py): plans carry only
what changed, older states never win, clients' unacknowledged writes are left alone, and
a staged switch is either cancelled or recorded before anything newer is planned."""
from __future__ import annotations

from relevent.messages import ControllerState
from relevent.protocols.mms.book import ModelBook
from relevent.scheduling.schedule import Schedule, settings_snapshot, status_snapshot

IED, LD = "IED", "LD0"


def book() -> ModelBook:
    return ModelBook(IED, {"pv1": LD}, has=lambda ref: True)


def state(seq: int, *, prio: int = 0, output: float = 0.0, at: int = 1000, full: bool = True,
          then: ControllerState | None = None, version: tuple | None = None) -> ControllerState:
    s = Schedule("FSCH01")
    s.settings.prio = prio
    change = {"status": status_snapshot(s), "settings": settings_snapshot(s) if full else None}
    return ControllerState("pv1", "ActPow", {"FSCH01": change}, (output, None, None), at,
                           version or (1, seq), "addr", full, {}, then)


def refs_of(plan) -> set:
    return {u[0] for u in plan.updates}


def changed_settings(plan) -> set:
    """What a plan writes besides the start times (written whenever settings come: the model
    must show the precision the schedule keeps)."""
    return {ref for ref in refs_of(plan) if ".StrTm" not in ref}


def test_a_first_state_writes_every_attribute_and_an_unchanged_one_writes_nothing():
    b = book()
    first = b.take(state(1), [], cancel=lambda serial: True)
    assert {f"{LD}/ActPow_FSCH01.SchdPrio.setVal", f"{LD}/ActPow_FSCH01.SchdSt.stVal"} <= refs_of(first)
    again = b.take(state(2, full=False), [], cancel=lambda serial: True)
    assert again is not None and again.updates == []


def test_only_what_changed_is_planned():
    b = book()
    b.take(state(1), [], cancel=lambda serial: True)
    plan = b.take(state(2, prio=30), [], cancel=lambda serial: True)
    assert changed_settings(plan) == {f"{LD}/ActPow_FSCH01.SchdPrio.setVal"}


def test_an_older_state_is_never_planned_over_a_newer_one():
    b = book()
    b.take(state(5, prio=30), [], cancel=lambda serial: True)
    assert b.take(state(4, prio=10), [], cancel=lambda serial: True) is None
    assert b.applied[("pv1", "ActPow", "FSCH01")]["settings"]["prio"] == 30


def test_attributes_clients_wrote_after_the_state_are_left_as_they_wrote_them():
    b = book()
    b.take(state(1), [], cancel=lambda serial: True)
    plan = b.take(state(2, prio=30), [("FSCH01", "SchdPrio", 0, 99)], cancel=lambda serial: True)
    assert f"{LD}/ActPow_FSCH01.SchdPrio.setVal" not in refs_of(plan)


def test_a_partial_state_before_any_full_one_is_skipped():
    b = book()
    plan = b.take(state(1, full=False), [], cancel=lambda serial: True)
    assert not any("FSCH01" in ref for ref in refs_of(plan))


def test_an_output_change_is_planned_as_outputs():
    b = book()
    b.take(state(1), [], cancel=lambda serial: True)
    plan = b.take(state(2, output=500.0, full=False), [], cancel=lambda serial: True)
    assert plan.outputs and plan.rest == []


def test_a_staged_switch_the_switcher_did_not_take_is_cancelled_and_the_new_state_planned_from_the_old():
    b = book()
    b.take(state(1), [], cancel=lambda serial: True)
    staged = b.stage(state(0, prio=50, version=(1, 1, 1)), [])
    b.armed(staged)
    cancelled = []
    plan = b.take(state(2, prio=30), [], cancel=lambda serial: cancelled.append(serial) or True)
    assert cancelled == [staged.serial] and b.staged == {}
    assert changed_settings(plan) == {f"{LD}/ActPow_FSCH01.SchdPrio.setVal"}
    assert b.switched_on_time == 0
    # Its due time is kept once, for the endpoint to count it as late if it was due already.
    assert b.take_cancelled() == [staged.state.at] and b.take_cancelled() == []


def test_a_staged_switch_the_switcher_took_is_recorded_first_and_the_new_plan_made_on_top_of_it():
    b = book()
    b.take(state(1), [], cancel=lambda serial: True)
    staged = b.stage(state(0, prio=50, version=(1, 1, 1)), [])
    b.armed(staged)
    plan = b.take(state(2, prio=50), [], cancel=lambda serial: False)  # already written
    assert changed_settings(plan) == set()   # the switch wrote prio 50 already
    assert b.switched_on_time == 1
    assert b.take_cancelled() == []   # applied by the switcher: its report carries its lateness


def test_reports_of_applied_switches_are_recorded_a_few_at_a_time():
    b = ModelBook(IED, {f"d{i}": LD for i in range(5)}, has=lambda ref: True)
    for i in range(5):
        s = state(1)
        s.der = f"d{i}"
        b.take(s, [], cancel=lambda serial: True)
        nxt = state(0, prio=10, version=(1, 1, 1))
        nxt.der = f"d{i}"
        plan = b.stage(nxt, [])
        b.armed(plan)
        b.reported(plan.serial, object())
    assert b.settle(limit=2) is True
    assert b.switched_on_time == 2 and len(b.staged) == 3
    assert b.settle(limit=10) is False
    assert b.switched_on_time == 5 and b.staged == {}


def test_a_report_for_a_switch_recorded_already_is_ignored():
    b = book()
    b.take(state(1), [], cancel=lambda serial: True)
    plan = b.stage(state(0, prio=50, version=(1, 1, 1)), [])
    b.armed(plan)
    b.drop_staged(("pv1", "ActPow"), cancel=lambda serial: False)   # recorded here
    b.reported(plan.serial, object())                               # the late report
    assert b.settle() is False and b.switched_on_time == 1


def test_attributes_the_model_does_not_have_are_never_planned():
    b = ModelBook(IED, {"pv1": LD}, has=lambda ref: "StrTm" not in ref)
    plan = b.take(state(1), [], cancel=lambda serial: True)
    assert plan.updates and not any("StrTm" in ref for ref in refs_of(plan))


def test_a_first_state_leaves_out_the_settings_the_model_holds_since_it_was_built():
    asked = []

    defaults = settings_snapshot(Schedule("FSCH01"))

    def pristine(refs, slots):  # the model as built holds a default schedule's settings
        asked.append((refs.ln, slots))
        return {**defaults, "prio": 0, "values": [0.0] * slots}
    b = ModelBook(IED, {"pv1": LD}, has=lambda ref: True, pristine=pristine)
    first = b.take(state(1, prio=4), [], cancel=lambda serial: True)
    written = refs_of(first)
    base = f"{LD}/ActPow_FSCH01"
    assert f"{base}.SchdPrio.setVal" in written  # 4: not what the model holds
    assert f"{base}.SchdSt.stVal" in written and f"{base}.StrTm01.setTm" in written  # status, starts: always
    assert not {f"{base}.ValASG001.setMag.f", f"{base}.SchdIntv.setVal", f"{base}.NumEntr.setVal"} & written
    assert asked == [("ActPow_FSCH01", 100)]
    # Planned on top of what is applied from then on: the model's initial settings no longer count.
    b.take(state(2, prio=0), [], cancel=lambda serial: True)
    assert asked == [("ActPow_FSCH01", 100)]
    # Without them (the server listens: a client may have written), a first state writes everything.
    c = ModelBook(IED, {"pv1": LD}, has=lambda ref: True, pristine=lambda refs, slots: None)
    assert f"{base}.ValASG001.setMag.f" in refs_of(c.take(state(1), [], cancel=lambda serial: True))
