"""Counters that never go down, from counts that actors keep and lose when they restart.

An actor counts from 0 in each incarnation (a WAN endpoint's refusals, an MMS endpoint's
switch lateness; a supervisor's restart counts, lost when the supervisor itself restarts).
A Prometheus counter must only grow, so the observer adds up what each incarnation
counted: a reading with the same owner adds its increase since the last one; a reading of
a new owner (or, should it ever happen, a smaller value from the same one) starts over, and
adds all of its value.  Pure: the memory is a dict in, a new dict out.

What is lost: increments of an incarnation that ended after the last sample (at most one
sample period, `[runtime] sample_s`, of them).
"""
from __future__ import annotations

from collections.abc import Iterable

from relevent.observe.extract import Reading

EMPTY: dict = {"last": {}, "totals": {}}


def accumulate(memory: dict, readings: Iterable[Reading]) -> dict:
    """The memory after `readings`: {"last": source -> (owner, value), "totals": series ->
    total}.  Series stay once seen; sources not read this time keep their last reading."""
    last, totals = dict(memory["last"]), dict(memory["totals"])
    for r in readings:
        before = last.get(r.source)
        if before is None or before[0] != r.owner or r.value < before[1]:
            increase = r.value
        else:
            increase = r.value - before[1]
        last[r.source] = (r.owner, r.value)
        totals[r.series] = totals.get(r.series, 0) + increase
    return {"last": last, "totals": totals}
