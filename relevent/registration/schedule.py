"""The registration state machine and its retry back-off (Dutch DSO interface specification).

Pure: no file, clock, key or network here (time is an argument), so every rule is tested on
its own (tests/test_registration_schedule.py).  relevent/registration/client.py does the I/O
and calls `on_result` for every thing that happens.

States (`State.kind`):

    unregistered  no certificate yet (a new site): an attempt is due now
    requesting    an attempt is in flight (persisted first, so a crash mid-attempt is seen)
    registered    a certificate is held (`cert_expiry_ms`, `serial`)
    failed        the last attempt failed (`reason`); the next one is at `next_attempt_ms`
    revoked       the certificate was revoked or is unusable (`reason`): back to
                  registration, an attempt is due now (with a new key after a revocation)

Invariants, and why:

* **The back-off is exactly the written one.**  After the n-th consecutive failed attempt
  the next one starts `BACKOFF_MS[n-1]` after the failed attempt started: immediately,
  30 s, 5 min, 15 min, 1 h, 1 day, 1 week, then every `MONTH_MS` (30 days) for ever.  The
  steps count from the start of the failed attempt, not from its end, so a slow timeout
  does not stretch the schedule; `due` then holds as soon as the clock reaches
  `next_attempt_ms` (or later, if the attempt outlasted its delay).
* **Failures count until a certificate is issued.**  Only `issued` resets `failures` to 0;
  a refusal (wrong token), an unreachable service and an invalid answer all count alike,
  because the specification has one schedule for every failed attempt.  A device sent back
  to registration (revocation, certificate error) starts at 0 again: its first attempt is
  immediate.
* **No attempt before it is due.**  `on_result(state, ATTEMPT, now)` raises
  `TransitionError` unless `due(state, now)`; `force=True` (an operator's `relevent
  register`) is the one exception, and is explicit.
* **Registered only through issued.**  The only way into `registered` is an `issued`
  result answering an attempt in flight; `revoked` and `cert_error` only leave
  `registered` (a revocation of a certificate we no longer hold means nothing).
* **A crash is a failed attempt.**  A state read back as `requesting` (the process died
  mid-attempt: the result is unknown) is `recover`ed as a failure with reason
  "interrupted", so a crash loop cannot hammer the service faster than the back-off.
* **Serialisable.**  `State.to_json()` / `State.from_json()` round-trip exactly; unknown
  or missing fields in a stored file raise ValueError (a corrupt state file is reported,
  not guessed at).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
MONTH_MS = 30 * DAY_MS

#: Delay before the next attempt after the 1st, 2nd, ... 7th consecutive failure; every
#: failure after the 7th waits MONTH_MS.
BACKOFF_MS = (0, 30 * SECOND_MS, 5 * MINUTE_MS, 15 * MINUTE_MS, HOUR_MS, DAY_MS, 7 * DAY_MS)

KINDS = ("unregistered", "requesting", "registered", "failed", "revoked")

# Results (what happened), fed to on_result.
ATTEMPT = "attempt"          # an attempt starts now
ISSUED = "issued"            # the service issued a certificate and it verified
REFUSED = "refused"          # the service answered no (wrong token, bad CSR)
UNREACHABLE = "unreachable"  # no answer: connection, TLS, timeout, 5xx
INVALID = "invalid"          # an answer, but the certificate did not verify
REVOKED = "revoked"          # the CRL lists our certificate
CERT_ERROR = "cert_error"    # our certificate is missing, expired or does not verify
FAILURES = (REFUSED, UNREACHABLE, INVALID)
RESULTS = (ATTEMPT, ISSUED) + FAILURES + (REVOKED, CERT_ERROR)


class TransitionError(ValueError):
    """A result that cannot happen in this state (a bug in the caller, never a network fact)."""


def backoff_ms(failures: int) -> int:
    """The delay before the next attempt after `failures` consecutive failed attempts (0
    for none: a first attempt is immediate)."""
    if failures < 0:
        raise ValueError(f"failures must be >= 0, got {failures}")
    if failures == 0:
        return 0
    return BACKOFF_MS[failures - 1] if failures <= len(BACKOFF_MS) else MONTH_MS


def next_attempt(failures: int, last_attempt_ms: int) -> int:
    """When (ms since the epoch) the next attempt is due after `failures` consecutive failed
    attempts, the last of which started at `last_attempt_ms`."""
    return last_attempt_ms + backoff_ms(failures)


@dataclass(frozen=True)
class Result:
    """What happened: `kind` is one of RESULTS; `reason` says why for a failure or a
    revocation; `expiry_ms` and `serial` describe an issued certificate."""

    kind: str
    reason: str = ""
    expiry_ms: int | None = None
    serial: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in RESULTS:
            raise ValueError(f"unknown result {self.kind!r} (known: {', '.join(RESULTS)})")
        if self.kind == ISSUED and self.expiry_ms is None:
            raise ValueError("an issued result needs the certificate's expiry_ms")


@dataclass(frozen=True)
class State:
    kind: str = "unregistered"
    failures: int = 0                     # consecutive failed attempts since the last issue
    attempts: int = 0                     # attempts ever made (for status)
    last_attempt_ms: int | None = None    # when the last attempt started
    next_attempt_ms: int | None = None    # when the next attempt is due (None: not planned)
    reason: str = ""                      # why failed / revoked
    cert_expiry_ms: int | None = None     # registered: the certificate's notAfter
    serial: str | None = None             # registered: its serial number (hex)
    since_ms: int | None = None           # when this state was entered

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown registration state {self.kind!r} (known: {', '.join(KINDS)})")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "State":
        if not isinstance(data, dict):
            raise ValueError(f"a registration state is a JSON object, got {type(data).__name__}")
        fields = set(cls.__dataclass_fields__)
        unknown = set(data) - fields
        missing = fields - set(data)
        if unknown or missing:
            raise ValueError(f"registration state: unknown fields {sorted(unknown)}, missing {sorted(missing)}")
        for key in ("failures", "attempts"):
            if isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 0:
                raise ValueError(f"registration state: {key} must be an integer >= 0, got {data[key]!r}")
        for key in ("last_attempt_ms", "next_attempt_ms", "cert_expiry_ms", "since_ms"):
            if data[key] is not None and (isinstance(data[key], bool) or not isinstance(data[key], int)):
                raise ValueError(f"registration state: {key} must be an integer or null, got {data[key]!r}")
        if not isinstance(data["reason"], str) or not isinstance(data["kind"], str):
            raise ValueError("registration state: kind and reason must be strings")
        if data["serial"] is not None and not isinstance(data["serial"], str):
            raise ValueError("registration state: serial must be a string or null")
        return cls(**data)


def initial(now_ms: int) -> State:
    """A site that never registered: an attempt is due now."""
    return State("unregistered", next_attempt_ms=now_ms, since_ms=now_ms)


def due(state: State, now_ms: int) -> bool:
    """Whether an attempt may start at `now_ms`."""
    if state.kind in ("unregistered", "revoked"):
        return True
    if state.kind == "failed":
        return state.next_attempt_ms is not None and now_ms >= state.next_attempt_ms
    return False


def recover(state: State) -> State:
    """A state read back after a restart: an attempt left `requesting` (its result lost with
    the process) counts as a failed attempt, so the back-off continues where it was."""
    if state.kind != "requesting":
        return state
    failures = state.failures + 1
    last = state.last_attempt_ms if state.last_attempt_ms is not None else 0
    return replace(state, kind="failed", failures=failures, reason="interrupted (the attempt's result was lost)",
                   next_attempt_ms=next_attempt(failures, last))


def on_result(state: State, result: Result, now_ms: int, force: bool = False) -> State:
    """The state after `result` happened at `now_ms` (see the module's invariants)."""
    kind = result.kind
    if kind == ATTEMPT:
        if state.kind not in ("unregistered", "failed", "revoked"):
            raise TransitionError(f"no attempt from {state.kind}")
        if not force and not due(state, now_ms):
            raise TransitionError(f"attempt at {now_ms} before it is due ({state.next_attempt_ms})")
        return replace(state, kind="requesting", attempts=state.attempts + 1, last_attempt_ms=now_ms,
                       next_attempt_ms=None, since_ms=now_ms)
    if kind == ISSUED:
        if state.kind != "requesting":
            raise TransitionError(f"a certificate issued without an attempt in flight (state {state.kind})")
        return replace(state, kind="registered", failures=0, reason="", next_attempt_ms=None,
                       cert_expiry_ms=result.expiry_ms, serial=result.serial, since_ms=now_ms)
    if kind in FAILURES:
        if state.kind != "requesting":
            raise TransitionError(f"{kind} without an attempt in flight (state {state.kind})")
        failures = state.failures + 1
        return replace(state, kind="failed", failures=failures, reason=f"{kind}: {result.reason}",
                       next_attempt_ms=next_attempt(failures, state.last_attempt_ms), cert_expiry_ms=None,
                       serial=None, since_ms=now_ms)
    # REVOKED, CERT_ERROR: back to registration, at once.
    if state.kind != "registered":
        raise TransitionError(f"{kind} while {state.kind}: there is no certificate to lose")
    return replace(state, kind="revoked", failures=0, reason=f"{kind}: {result.reason}", next_attempt_ms=now_ms,
                   since_ms=now_ms)
