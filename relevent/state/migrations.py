"""Store record format migrations: a chain of pure functions, version N -> N+1.

Invariants, and why:

* Every record on disk carries its format version (``record["version"]``, written by
  `relevent.store`).  A build reads every version from `FIRST` to `current()` by applying
  the chain in order, and writes only `current()`: the next save of a migrated record
  upgrades it on disk.  So an upgrade of relevent never strands a deployed site's
  schedules, and a site never has to be migrated "offline".
* Each step is a pure function of one whole record (``format``, ``version``, ``key``,
  ``data``): no clock, no I/O, no other record, and it never changes its argument (it
  returns a new dict).  A step can then be tested alone with a literal record, and a load
  that fails half-way leaves nothing changed, in memory or on disk.
* A record newer than `current()` is refused (`TooNew`, naming both versions), never
  guessed at: a newer build may have changed the meaning of a field, and writing our
  version over it would lose what the newer build wrote.

To add version 2: write ``def v1_to_v2(record) -> dict`` below (returning a record whose
``version`` is 2), append it to `CHAIN`, and add its test in tests/test_state_migrations.py
with a literal v1 record.  `current()` follows from the chain's length; nothing else
changes here or in the store.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

FIRST = 1  # the first version that carried a version field (every record ever written)

Migration = Callable[[dict], dict]

# CHAIN[i] turns a record of version FIRST + i into one of version FIRST + i + 1.
CHAIN: tuple[Migration, ...] = ()


class MigrationError(Exception):
    """A record's version cannot be read by this build."""


class TooNew(MigrationError):
    def __init__(self, version: int, current: int) -> None:
        self.version, self.current = version, current
        super().__init__(f"format version {version} was written by a newer relevent; this build reads "
                         f"versions {FIRST}..{current}")


class UnknownVersion(MigrationError):
    def __init__(self, version: Any, current: int) -> None:
        self.version, self.current = version, current
        super().__init__(f"format version {version!r} is not a version relevent ever wrote "
                         f"(this build reads {FIRST}..{current})")


def current(chain: Sequence[Migration] | None = None) -> int:
    """The version this build writes: the end of the chain."""
    return FIRST + len(CHAIN if chain is None else chain)


def upgrade(record: dict, chain: Sequence[Migration] | None = None) -> dict:
    """The record at the current version: ``record`` itself if it is current, else a new
    dict made by applying each step from its version on.  Raises `TooNew` for a record
    from a newer build and `UnknownVersion` for a version no build wrote."""
    chain = CHAIN if chain is None else chain
    top = current(chain)
    version = record.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < FIRST:
        raise UnknownVersion(version, top)
    if version > top:
        raise TooNew(version, top)
    for step in chain[version - FIRST:]:
        before = version
        record = step(record)
        version = record.get("version")
        if version != before + 1:  # a step that forgets to bump the version is a bug, not data
            raise AssertionError(f"migration {step.__name__} turned version {before} into {version!r}, "
                                 f"not {before + 1}")
    return record
