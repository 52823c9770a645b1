"""The IEC 61850-90-10 schedule (FSCH) as a pure state machine.

No clock, thread or I/O: every call that depends on time takes ``now`` (integer ms since
the Unix epoch, UTC).  The schedule actor owns one `Schedule`, calls `advance(now)` at the
times `next_wakeup()` names, and publishes what changed.

The rule the state machine implements (docs/scheduling.md, rules 2-4): while
enabled, the run in force at time t is the one of the latest start s <= t with
t < s + NumEntr * SchdIntv, entry k covering [s + k*SchdIntv, s + (k+1)*SchdIntv).  Starts
are the set StrTmNN (erased once used) and, for a periodic schedule, the calendar
occurrences of each StrTm.  Values, NumEntr and SchdIntv are read live.

Enable refuses (SchdEnaErr VALUES) a run whose values are not finite numbers (NaN, +-inf)
or, when the schedule was given the DER's rating as `limit` (W), whose magnitude exceeds
it: a schedule that enables is one a device can carry out.  Why: +-inf reached the MQTT
pivot command as `-Infinity` (not JSON), and 1e12 W means nothing to an inverter
(../shared/spec/security.md section 5).  The device command is clamped as well
(relevent.devices.command): values are read live, so a later write is caught there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from relevent.scheduling.calendar import Calendar, latest_occurrence, next_occurrence

SLOTS = 100          # value slots ValASG001..100 / ValSPG001..100
START_SLOTS = 16     # StrTm01..16
INT32 = (-(2 ** 31), 2 ** 31 - 1)


class State(IntEnum):
    NOT_READY = 1
    START_TIME_REQUIRED = 2
    READY = 3
    RUNNING = 4


class EnaErr(IntEnum):
    NONE = 1
    NUM_ENTR = 2
    SCHD_INTV = 3
    VALUES = 4
    INCONSISTENT_CDC = 5
    STR_TM = 6
    OTHER = 99


class Refusal(IntEnum):
    """Why a write or operate is refused, as the MMS DataAccessError it maps to."""
    ACCESS_DENIED = 3
    VALUE_INVALID = 11


# What the site configuration can lock per schedule (ReLevENT's scheduler configuration).
LOCKABLE = ("EnaReq", "DsaReq", "StrTm", "SchdPrio", "SchdReuse")
# What a client can write, by its 90-10 data object name (Schedule.write).  Val and StrTm
# take an index: 1..SLOTS and 1..START_SLOTS.
FIELDS = ("NumEntr", "SchdIntv", "SchdPrio", "SchdReuse", "Val", "StrTm")
RESERVE_NAME = "Res_FSCH01"


def schedule_names(count: int) -> list[str]:
    """A controller's schedules: FSCH01..NN, then the reserve (the reference model's names)."""
    return [f"FSCH{n:02d}" for n in range(1, count + 1)] + [RESERVE_NAME]


@dataclass(frozen=True)
class StartTime:
    tm: int | None = None          # setTm in ms; None = not set (0 on the wire)
    cal: Calendar | None = None    # setCal; used only by periodic schedules


@dataclass
class Settings:
    """What clients write (SP).  Anything is accepted here; validation is at enable."""
    num_entr: int = 100
    schd_intv: int = 0
    values: list = field(default_factory=lambda: [0.0] * SLOTS)
    prio: int = 0
    starts: list = field(default_factory=lambda: [StartTime()] * START_SLOTS)
    reuse: bool = False
    writer: str = ""    # the party that last wrote it (policy: who may touch it; audit); "" nobody yet


@dataclass
class Status:
    """What clients read (ST/MX).  None times are sent with q INVALID."""
    state: State = State.NOT_READY
    ena_err: EnaErr = EnaErr.NONE
    entry: int = 0                 # SchdEntr: 1-based, 0 when not running
    act_start: int | None = None   # ActStrTm
    next_start: int | None = None  # NxtStrTm
    run_slot: int | None = None    # which StrTm (0-based) the current run came from


@dataclass(frozen=True)
class Outcome:
    """Result of a write or operate: ok, or refused with the MMS error and a reason."""
    ok: bool
    refusal: Refusal | None = None
    reason: str = ""

    @staticmethod
    def accept() -> "Outcome":
        return Outcome(True)

    @staticmethod
    def refuse(refusal: Refusal, reason: str) -> "Outcome":
        return Outcome(False, refusal, reason)


class Schedule:
    def __init__(self, name: str, *, boolean: bool = False, periodic: bool = False, reserve: bool = False,
                 locked: frozenset = frozenset(), settings: Settings | None = None,
                 status: Status | None = None, limit: float | None = None) -> None:
        self.name = name
        # The largest magnitude a value may have at enable (the DER's rated power, W); None: no bound.
        self.limit = limit
        self.boolean = boolean      # ValSPG (OnOff) instead of ValASG
        self.periodic = periodic    # StrTm has setCal
        self.reserve = reserve
        # The reserve's priority and start are fixed and it can never be disabled.
        self.locked = frozenset(locked) | (frozenset({"EnaReq", "DsaReq", "StrTm", "SchdPrio"})
                                           if reserve else frozenset())
        self.settings = settings or Settings(values=[False if boolean else 0.0] * SLOTS)
        self.status = status or Status()

    def copy(self) -> Schedule:
        """An independent copy, as copy.deepcopy would make it, in a tenth of the time: a
        `fork` with its values copied too (every write replaces a field of `settings` or
        `status` or an item of their two lists, whose items are immutable: numbers, bools,
        frozen StartTime).  What for: the control session tries each write on a copy of its
        mirror (all or nothing), and a deep copy was three quarters of a write's cost
        (bench/README.md, "Where a write's round trip goes")."""
        twin = self.fork()
        twin.settings.values = list(self.settings.values)
        return twin

    # -- derived -------------------------------------------------------------------------
    def duration_ms(self) -> int | None:
        """Length of one run, or None while NumEntr/SchdIntv make no valid run."""
        s = self.settings
        if not _valid_num_entr(s.num_entr, len(s.values)) or not _is_int(s.schd_intv) or s.schd_intv <= 0:
            return None
        return s.num_entr * s.schd_intv * 1000

    def value(self) -> Any:
        """The output while running (ValMV/ValSPS), else None (q INVALID)."""
        st = self.status
        return self.settings.values[st.entry - 1] if st.state == State.RUNNING and st.entry else None

    def _latest_start(self, t: int) -> tuple[int, int] | None:
        """(start, slot) of the latest start at or before t."""
        best = None
        for slot, start in enumerate(self.settings.starts):
            if start.tm is None:
                continue
            if self.periodic and start.cal is not None and start.cal.problem() is None:
                s = latest_occurrence(start.cal, start.tm, t)
            else:
                s = start.tm if start.tm <= t else None
            if s is not None and (best is None or s > best[0]):
                best = (s, slot)
        return best

    def _next_start(self, t: int) -> int | None:
        """The earliest start strictly after t."""
        best = None
        for start in self.settings.starts:
            if start.tm is None:
                continue
            if self.periodic and start.cal is not None and start.cal.problem() is None:
                s = next_occurrence(start.cal, start.tm, t)
            else:
                s = start.tm if start.tm > t else None
            if s is not None and (best is None or s < best):
                best = s
        return best

    def _run_at(self, t: int) -> tuple[int, int] | None:
        """(start, slot) of the run in force at t, if any."""
        duration = self.duration_ms()
        latest = self._latest_start(t)
        if duration is None or latest is None or t >= latest[0] + duration:
            return None
        return latest

    # -- writes (SP) -----------------------------------------------------------------------
    def write_num_entr(self, value: int) -> Outcome:
        self.settings.num_entr = value
        return Outcome.accept()

    def write_intv(self, value: int) -> Outcome:
        self.settings.schd_intv = value
        return Outcome.accept()

    def write_value(self, index: int, value: Any) -> Outcome:
        """index 1..number of slots; any value, NaN included (checked at enable)."""
        if not 1 <= index <= len(self.settings.values):
            return Outcome.refuse(Refusal.ACCESS_DENIED, f"no value slot {index}")
        self.settings.values[index - 1] = bool(value) if self.boolean else float(value)
        return Outcome.accept()

    def write_prio(self, value: int) -> Outcome:
        if "SchdPrio" in self.locked:
            return Outcome.refuse(Refusal.ACCESS_DENIED, "SchdPrio is locked")
        self.settings.prio = value
        return Outcome.accept()

    def write_reuse(self, value: bool) -> Outcome:
        if "SchdReuse" in self.locked:
            return Outcome.refuse(Refusal.ACCESS_DENIED, "SchdReuse is locked")
        self.settings.reuse = bool(value)
        return Outcome.accept()

    def write_start(self, index: int, tm: int | None, now: int | None, cal: Calendar | None = None) -> Outcome:
        """StrTm<index>.setTm (and setCal): must lie in the future (unless `now` is None:
        see `write`).  None clears the slot."""
        if not 1 <= index <= START_SLOTS:
            return Outcome.refuse(Refusal.ACCESS_DENIED, f"no StrTm{index:02d}")
        if "StrTm" in self.locked:
            return Outcome.refuse(Refusal.ACCESS_DENIED, "StrTm is locked")
        if tm is not None and now is not None and tm <= now:
            return Outcome.refuse(Refusal.VALUE_INVALID, f"StrTm{index:02d} must lie in the future")
        old = self.settings.starts[index - 1]
        self.settings.starts[index - 1] = StartTime(tm, cal if cal is not None else old.cal)
        return Outcome.accept()

    def write(self, field: str, index: int, value: Any, now: int | None) -> Outcome:
        """One written field, by its 90-10 name (FIELDS): the single dispatch every path
        uses (the controller, the endpoints' mirrors, the control session).  `now` None
        skips the "StrTm in the future" check: a write accepted earlier, applied again on
        top of a newer state.  An unknown field is refused, never guessed."""
        if field == "NumEntr":
            return self.write_num_entr(value)
        if field == "SchdIntv":
            return self.write_intv(value)
        if field == "SchdPrio":
            return self.write_prio(value)
        if field == "SchdReuse":
            return self.write_reuse(value)
        if field == "Val":
            return self.write_value(index, value)
        if field == "StrTm":
            return self.write_start(index, value, now)
        return Outcome.refuse(Refusal.ACCESS_DENIED, f"unknown schedule field {field!r} (one of {', '.join(FIELDS)})")

    def write_start_cal(self, index: int, cal: Calendar) -> Outcome:
        if not 1 <= index <= START_SLOTS:
            return Outcome.refuse(Refusal.ACCESS_DENIED, f"no StrTm{index:02d}")
        if "StrTm" in self.locked:
            return Outcome.refuse(Refusal.ACCESS_DENIED, "StrTm is locked")
        self.settings.starts[index - 1] = replace(self.settings.starts[index - 1], cal=cal)
        return Outcome.accept()

    # -- operates (CO) ------------------------------------------------------------------------
    def validate(self, now: int, *, rating: bool = True) -> EnaErr:
        """The enable checks, in order; the first failure wins.  `rating` False skips the
        check against `limit` (the site's own enables: see `enable`)."""
        s = self.settings
        if not _valid_num_entr(s.num_entr, len(s.values)):
            return EnaErr.NUM_ENTR
        if self.values_problem(rating=rating) is not None:
            return EnaErr.VALUES
        if not _is_int(s.schd_intv) or s.schd_intv <= 0:
            return EnaErr.SCHD_INTV
        if self._run_at(now) is None and self._next_start(now) is None:
            return EnaErr.STR_TM
        return EnaErr.NONE

    def values_problem(self, *, rating: bool = True) -> str | None:
        """Why the values of a run cannot be enabled (the first bad one), or None."""
        s = self.settings
        if self.boolean or not _valid_num_entr(s.num_entr, len(s.values)):
            return None
        for index, v in enumerate(s.values[:s.num_entr], start=1):
            if isinstance(v, float) and not math.isfinite(v):
                return f"Val{index:03d} = {v} is not a finite number"
            if rating and self.limit is not None and isinstance(v, (int, float)) and abs(v) > self.limit:
                return f"Val{index:03d} = {v:g} exceeds the DER's rating of {self.limit:g} W"
        return None

    def enable(self, now: int, *, by_site: bool = False) -> Outcome:
        """EnaReq ctlVal=true.  On success the schedule is Ready (or already Running,
        when a start lies in the past and its run covers now) before this returns.
        A failed enable leaves the schedule Not ready, whatever it was before.
        ``by_site`` is the site's own policy (keeping the reserve running): no lock applies,
        nor the rating (`limit`): the reserve must run whatever was written into it, and the
        device command bounds its values anyway."""
        if "EnaReq" in self.locked and not by_site:
            return Outcome.refuse(Refusal.ACCESS_DENIED, "EnaReq is locked")
        err = self.validate(now, rating=not by_site)
        self.status.ena_err = err
        if err != EnaErr.NONE:
            self._stop()
            detail = self.values_problem(rating=not by_site) if err == EnaErr.VALUES else None
            return Outcome.refuse(Refusal.VALUE_INVALID, f"SchdEnaErr {int(err)} ({err.name})"
                                  + (f": {detail}" if detail else ""))
        if self.status.state != State.RUNNING:
            self.status.state = State.READY
        self.advance(now)
        return Outcome.accept()

    def disable(self, *, by_site: bool = False) -> Outcome:
        """DsaReq ctlVal=true: accepted in every state (unless locked).  ``by_site`` is the
        site's own policy (ending a local schedule it armed): no lock applies."""
        if "DsaReq" in self.locked and not by_site:
            return Outcome.refuse(Refusal.ACCESS_DENIED, "DsaReq is locked")
        self._stop()
        return Outcome.accept()

    def _stop(self) -> None:
        st = self.status
        st.state, st.entry, st.act_start, st.next_start, st.run_slot = State.NOT_READY, 0, None, None, None

    # -- time ---------------------------------------------------------------------------------
    def advance(self, now: int) -> bool:
        """Apply every transition due at `now`; True if the status changed."""
        st = self.status
        if st.state not in (State.READY, State.RUNNING):
            return False
        before = replace(st)
        run = self._run_at(now)
        if st.state == State.RUNNING and (run is None or run[0] != st.act_start):
            self._end_run()
        if run is not None:
            start, slot = run
            st.state, st.act_start, st.run_slot = State.RUNNING, start, slot
            st.entry = (now - start) // (self.settings.schd_intv * 1000) + 1
        else:
            st.state, st.entry, st.act_start, st.run_slot = State.READY, 0, None, None
        st.next_start = self._next_start(now)
        if st.state == State.READY and st.next_start is None:
            st.state = State.NOT_READY
        return st != before

    def _end_run(self) -> None:
        """A run ended or was superseded: a non-periodic start is used up.  Only if the slot
        still holds it: a client that wrote a new start into the running slot ended the run
        with that write, and its new start must not be erased with the old one."""
        st = self.status
        slot = st.run_slot
        if slot is not None and not (self.periodic and self.settings.starts[slot].cal is not None) \
                and self.settings.starts[slot].tm == st.act_start:
            self.settings.starts[slot] = replace(self.settings.starts[slot], tm=None)
        st.entry, st.act_start, st.run_slot = 0, None, None

    def next_wakeup(self) -> int | None:
        """The next instant at which `advance` can change something."""
        st = self.status
        if st.state == State.RUNNING:
            duration = self.duration_ms()
            if duration is None:  # made invalid by a write: due now
                return st.act_start
            intv = self.settings.schd_intv * 1000
            times = [st.act_start + st.entry * intv, st.act_start + duration]
            if st.next_start is not None:
                times.append(st.next_start)
            return min(times)
        if st.state == State.READY:
            return st.next_start
        return None

    def fork(self) -> "Schedule":
        """A copy to simulate time on (forecasts, the next state): `advance` changes the
        status and erases used start times, nothing else, so only those are copied."""
        twin = Schedule.__new__(Schedule)
        twin.__dict__.update(self.__dict__)
        twin.status = replace(self.status)
        twin.settings = replace(self.settings, starts=list(self.settings.starts))
        return twin

    # -- persistence ----------------------------------------------------------------------------
    def to_record(self) -> dict:
        s, st = self.settings, self.status
        return {
            "num_entr": s.num_entr, "schd_intv": s.schd_intv, "values": list(s.values), "prio": s.prio,
            "starts": [[x.tm, None if x.cal is None else list(_cal_tuple(x.cal))] for x in s.starts],
            "reuse": s.reuse, "writer": s.writer,
            "state": int(st.state), "ena_err": int(st.ena_err), "act_start": st.act_start,
            "run_slot": st.run_slot,
        }

    def load_record(self, record: dict) -> None:
        """Restore settings and status; `advance(now)` then puts a Running schedule at the
        right entry (or ends it), and a Ready one starts on time."""
        self.settings = Settings(
            num_entr=record["num_entr"], schd_intv=record["schd_intv"], values=list(record["values"]),
            prio=record["prio"], reuse=record["reuse"], writer=record.get("writer", ""),
            starts=[StartTime(tm, None if cal is None else Calendar(*cal)) for tm, cal in record["starts"]])
        self.status = Status(state=State(record["state"]), ena_err=EnaErr(record["ena_err"]),
                             act_start=record["act_start"], run_slot=record["run_slot"])


def status_snapshot(schedule: Schedule) -> dict:
    """What changes while a schedule runs (small: sent at every boundary)."""
    st = schedule.status
    return {"state": int(st.state), "ena_err": int(st.ena_err), "entry": st.entry, "act_start": st.act_start,
            "next_start": st.next_start, "run_slot": st.run_slot, "value": schedule.value()}


def settings_snapshot(schedule: Schedule) -> dict:
    """What clients wrote, and what the schedule is (sent when it changes)."""
    record = schedule.to_record()
    for key in ("state", "ena_err", "act_start", "run_slot"):
        del record[key]
    record.update(reserve=schedule.reserve, boolean=schedule.boolean, periodic=schedule.periodic,
                  locked=sorted(schedule.locked))
    return record


def from_snapshot(name: str, status: dict, settings: dict) -> Schedule:
    """A mirror of a schedule (endpoints validate writes with it)."""
    mirror = Schedule(name, boolean=settings["boolean"], periodic=settings["periodic"], reserve=settings["reserve"],
                      locked=frozenset(settings["locked"]))
    mirror.load_record({**settings, **status})
    mirror.status.entry, mirror.status.next_start = status["entry"], status["next_start"]
    return mirror


def _cal_tuple(cal: Calendar) -> tuple:
    return (cal.occ_per, cal.occ_type, cal.week_day, cal.month, cal.day, cal.hr, cal.mn)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _valid_num_entr(v: Any, slots: int = SLOTS) -> bool:
    return _is_int(v) and 1 <= v <= slots
