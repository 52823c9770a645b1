"""Progress lines of long work (relevent/progress.py): what they say and when, on a fake clock."""
from __future__ import annotations

import pytest

from relevent.progress import Progress, clock_text, left_s, line


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(total: int, every_s: float = 5.0) -> tuple[Progress, Clock, list[str]]:
    clock, lines = Clock(), []
    return Progress(total, "bench", say=lines.append, every_s=every_s, clock=clock), clock, lines


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (7.4, "0:07"), (72, "1:12"), (3723, "1:02:03"),
                                           (-3, "0:00")])
def test_durations_read_as_minutes_and_seconds_with_hours_when_there_are_any(seconds, text):
    assert clock_text(seconds) == text


def test_the_estimate_is_the_mean_pace_times_the_steps_left_and_absent_before_the_first_step():
    assert left_s(0, 10, 30.0) is None
    assert left_s(4, 10, 8.0) == pytest.approx(12.0)
    assert left_s(10, 10, 8.0) == 0.0


def test_a_line_names_done_total_percent_elapsed_what_is_left_and_the_step():
    assert line("chaos", 37, 120, 72.0, "kill der pv1 ok 97 ms") == \
        "chaos [37/120 30%] 1:12 elapsed, ~2:42 left: kill der pv1 ok 97 ms"
    assert line("", 120, 120, 300.0, "") == "[120/120 100%] 5:00 elapsed"


def test_ordinary_steps_print_at_most_one_line_every_few_seconds():
    p, clock, lines = make(100)
    for i in range(99):
        clock.t += 0.5
        p.begin(f"step {i + 1}")
        p.step(f"step {i + 1} ok")
    # 99 steps over 49.5 s: the first begin() and then about one line per 5 s, not 99.
    assert 9 <= len(lines) <= 12, lines
    assert lines[0] == "bench [0/100 0%] 0:00 elapsed: running step 1"


def test_a_failed_step_and_the_last_step_are_always_said():
    p, clock, lines = make(3, every_s=3600)
    p.step("one ok")            # the first line is due: said
    p.step("two FAILED", ok=False)
    p.step("three ok")
    assert [text.split(": ", 1)[1] for text in lines] == ["one ok", "two FAILED", "three ok"]
    assert lines[-1].startswith("bench [3/3 100%]") and "left" not in lines[-1]
    assert p.summary() == "bench 3 of 3 done in 0:00, 1 failed"


def test_a_long_step_says_what_it_still_waits_for():
    p, clock, lines = make(10)
    p.step("one ok")
    clock.t += 1
    p.begin("hang der pv1")
    clock.t += 2
    p.tick()                    # 3 s since the last line: not due yet
    assert len(lines) == 1
    clock.t += 4
    p.tick()
    assert lines[-1].endswith("still running hang der pv1 (0:06)"), lines
    clock.t += 1
    p.step()                    # no text: the step is named by what begin() said (not due: quiet)
    clock.t += 5
    p.step()
    assert lines[-1] == "bench [3/10 30%] 0:13 elapsed, ~0:30 left", lines   # 13 s for 3 steps, 7 to go


def test_a_phase_is_always_said():
    p, clock, lines = make(10, every_s=3600)
    p.phase("starting the site")
    p.phase("stopping the site")
    assert lines == ["bench [0/10 0%] 0:00 elapsed: starting the site",
                     "bench [0/10 0%] 0:00 elapsed: stopping the site"]
