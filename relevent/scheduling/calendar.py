"""Periodic start times (StrTm.setCal, CalendarTime with occType Time), in UTC.

The calendar fields place one occurrence in every period: Hour -> minute `mn`; Day ->
`hr:mn`; Week -> weekday `week_day` (1 Monday .. 7 Sunday) at `hr:mn`; Month -> day
`day` at `hr:mn` (clamped to the month's last day); Year -> `month`/`day` at `hr:mn`.
Seconds are 0.  A zero `week_day`, `day` or `month` takes the anchor's (setTm's).
Occurrences before the anchor (setTm) do not exist.

All times are integer milliseconds since the Unix epoch, UTC.  The reference scheduler
computed these in local time and added an hour instead of a day for Day; this does not.
"""
from __future__ import annotations

import calendar as _cal
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import IntEnum

UTC = timezone.utc


class OccPer(IntEnum):
    HOUR = 0
    DAY = 1
    WEEK = 2
    MONTH = 3
    YEAR = 4


@dataclass(frozen=True)
class Calendar:
    occ_per: int = OccPer.HOUR
    occ_type: int = 0  # 0 = Time; the other occurrence types are not supported
    week_day: int = 0
    month: int = 0
    day: int = 0
    hr: int = 0
    mn: int = 0

    def problem(self) -> str | None:
        """Why this calendar cannot produce occurrences, or None."""
        if self.occ_type != 0:
            return f"occType {self.occ_type} is not supported (only Time)"
        if self.occ_per not in tuple(OccPer):
            return f"occPer {self.occ_per} is not Hour, Day, Week, Month or Year"
        if not (0 <= self.hr <= 23 and 0 <= self.mn <= 59 and 0 <= self.day <= 31
                and 0 <= self.week_day <= 7 and 0 <= self.month <= 12):
            return "calendar field out of range"
        return None


def _dt(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def _ms(dt: datetime) -> int:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _period_start(dt: datetime, per: int) -> datetime:
    dt = dt.replace(minute=0, second=0, microsecond=0)
    if per == OccPer.HOUR:
        return dt
    dt = dt.replace(hour=0)
    if per == OccPer.DAY:
        return dt
    if per == OccPer.WEEK:
        return dt - timedelta(days=dt.weekday())
    dt = dt.replace(day=1)
    return dt if per == OccPer.MONTH else dt.replace(month=1)


def _shift(start: datetime, per: int, n: int) -> datetime:
    """Move a period start by n periods."""
    if per == OccPer.HOUR:
        return start + timedelta(hours=n)
    if per == OccPer.DAY:
        return start + timedelta(days=n)
    if per == OccPer.WEEK:
        return start + timedelta(days=7 * n)
    if per == OccPer.MONTH:
        months = start.year * 12 + start.month - 1 + n
        return start.replace(year=months // 12, month=months % 12 + 1)
    return start.replace(year=start.year + n)


def _occurrence_in(start: datetime, cal: Calendar, anchor: datetime) -> datetime:
    """The occurrence inside the period that begins at `start`."""
    per = cal.occ_per
    if per == OccPer.HOUR:
        return start.replace(minute=cal.mn)
    if per == OccPer.DAY:
        return start.replace(hour=cal.hr, minute=cal.mn)
    if per == OccPer.WEEK:
        week_day = cal.week_day or anchor.isoweekday()
        return start + timedelta(days=week_day - 1, hours=cal.hr, minutes=cal.mn)
    year = start.year
    month = start.month if per == OccPer.MONTH else (cal.month or anchor.month)
    day = min(cal.day or anchor.day, _cal.monthrange(year, month)[1])
    return datetime(year, month, day, cal.hr, cal.mn, tzinfo=UTC)


def latest_occurrence(cal: Calendar, anchor_ms: int, t_ms: int) -> int | None:
    """The last occurrence at or before t (and not before the anchor), or None."""
    if t_ms < anchor_ms:
        return None
    anchor, t = _dt(anchor_ms), _dt(t_ms)
    start = _period_start(t, cal.occ_per)
    occ = _occurrence_in(start, cal, anchor)
    if occ > t:
        occ = _occurrence_in(_shift(start, cal.occ_per, -1), cal, anchor)
    return _ms(occ) if occ >= anchor else None


def next_occurrence(cal: Calendar, anchor_ms: int, t_ms: int) -> int:
    """The first occurrence strictly after t (and not before the anchor)."""
    anchor = _dt(anchor_ms)
    ref = _dt(max(t_ms + 1, anchor_ms))
    start = _period_start(ref, cal.occ_per)
    occ = _occurrence_in(start, cal, anchor)
    if occ < ref:
        occ = _occurrence_in(_shift(start, cal.occ_per, 1), cal, anchor)
    return _ms(occ)
