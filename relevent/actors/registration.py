"""The site's registration with its DSO's service, run by the site ([registration]
service_url set; docs/registration.md): a supervised child of the site supervisor.

Invariant: what is due is decided by the registration's own pure schedule
(relevent/registration/schedule.py) through `RegistrationClient.step`, never here; this
actor only calls `step` when the persisted state says something may be due, and shows the
state in `relevent status`.  One step at a time, in a worker thread: a step is an HTTPS
request that may take `timeout_s`, and the actor must keep answering its supervisor's
heartbeats meanwhile.  The state file is the truth (an operator's `relevent register` may
change it too, under the same file lock): after every step and every wake-up the actor
reads it back.

When is a step run:
* at start, and whenever the state says an attempt is due (`failed`: at `next_attempt`;
  `unregistered`, `revoked`: at once);
* while registered, every `check_s` (the certificate and the CRL checked; a revocation or a
  certificate error sends the site back to registration in that same step).
A step that raises (a key file others may read, an unreadable token, the root to trust
not there yet: the error names the file) is shown in the status and retried after 1, 2,
4, ... s, at most every RETRY_AFTER_ERROR_S; the actor does not crash for it, since a
restart would change nothing.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from relevent.actors.base import ReleventActor
from relevent.runtime.bridge import ThreadBridge

log = logging.getLogger("relevent.registration")

RETRY_AFTER_ERROR_S = 60.0     # a step that raised (configuration or identity files) is tried again at most this late
MAX_SLEEP_S = 3600.0           # the actor looks at the state file at least this often
CHECK_S = 3600.0               # registered: the certificate and its CRL checked this often ([registration] check_s)


def seconds_until_next_step(kind: str, next_attempt_ms: int | None, last_check_ms: int | None, now_ms: int,
                            check_s: float) -> float:
    """How long to wait before the next step (pure): 0 when one is due now."""
    if kind in ("unregistered", "revoked", "requesting"):
        return 0.0
    if kind == "failed":
        if next_attempt_ms is None:
            return MAX_SLEEP_S
        return max(0.0, min(MAX_SLEEP_S, (next_attempt_ms - now_ms) / 1000))
    # registered: the certificate and the CRL, every check_s
    if last_check_ms is None:
        return 0.0
    return max(0.0, min(MAX_SLEEP_S, check_s - (now_ms - last_check_ms) / 1000))


def seconds_after_errors(errors: int) -> float:
    """The wait after `errors` (>= 1) steps in a row that raised: 1, 2, 4, ... s, at most
    RETRY_AFTER_ERROR_S (pure)."""
    return min(RETRY_AFTER_ERROR_S, 2.0 ** min(errors - 1, 16))


class RegistrationActor(ReleventActor):
    role = "registration"

    def __init__(self) -> None:
        super().__init__()
        self.client: Any = None
        self.bridge: ThreadBridge | None = None
        self.worker: threading.Thread | None = None
        self.state: Any = None
        self.error = ""
        self.errors = 0                  # steps in a row that raised
        self.last_check_ms: int | None = None
        self.steps = 0

    def on_configure(self) -> None:
        from relevent.registration.client import Config, RegistrationClient

        self.reg_config = Config.from_section(self.config, self.site["state_dir"])
        self.client = RegistrationClient(self.reg_config)
        self.bridge = ThreadBridge()
        self._read_state()
        self._plan()

    def _now_ms(self) -> int:
        return self.client.clock()

    def _read_state(self) -> None:
        try:
            self.state = self.client.state()
        except Exception as exc:  # noqa: BLE001 - a corrupt state file: shown, and `step` will say the same
            self.error = str(exc)

    def _plan(self) -> None:
        """Run a step now if one is due, else wake up when the next one is."""
        if self.worker is not None:
            return
        if self.error:
            wait = seconds_after_errors(self.errors)
        elif self.state is None:
            wait = 0.0
        else:
            wait = seconds_until_next_step(self.state.kind, self.state.next_attempt_ms, self.last_check_ms,
                                           self._now_ms(), float(self.config.get("check_s") or CHECK_S))
        if wait <= 0:
            self._start_step()
        else:
            self.wakeupAfter(wait, "registration-step")

    def _start_step(self) -> None:
        self.worker = threading.Thread(target=self._step, name="registration-step", daemon=True)
        self.worker.start()

    def _step(self) -> None:
        """Worker thread: one step; its result (or error) goes back through the bridge."""
        try:
            self.bridge.post(("state", self.client.step()))
        except Exception as exc:  # noqa: BLE001 - reported in the status, retried later
            self.bridge.post(("error", str(exc) or type(exc).__name__))

    def watch_fds(self) -> list[int]:
        return [self.bridge.fileno()] if self.bridge is not None else []

    def on_watch(self, ready: list[int]) -> None:
        for what, value in self.bridge.drain():
            self.worker = None
            self.steps += 1
            if what == "error":
                if value != self.error:
                    log.error("registration of %s: %s", self.reg_config.device_code, value)
                self.error = value
                self.errors += 1
                continue
            self.error, self.errors = "", 0
            self.state = value
            if value.kind == "registered":
                self.last_check_ms = self._now_ms()
        self._plan()

    def on_wakeup(self, payload: Any) -> None:
        if payload == "registration-step" and self.worker is None:
            if not self.error:
                self._read_state()     # an operator's `relevent register` may have moved it
            if self.error:
                self.error = ""        # try again: the step says what is still wrong
                self._start_step()
            else:
                self._plan()

    def on_stop(self) -> None:
        if self.worker is not None:
            self.worker.join(timeout=0.1)   # a request in flight ends with its timeout; the state file is locked
        if self.bridge is not None:
            self.bridge.close()

    def detail(self) -> dict:
        from relevent.registration.client import describe

        out: dict[str, Any] = describe(self.state, self.reg_config) if self.state is not None else {
            "device_code": self.reg_config.device_code}
        out["stepping"] = self.worker is not None
        out["steps"] = self.steps
        if self.error:
            out["error"] = self.error
        return out


def registration_child(data: dict) -> dict | None:
    """The registration actor's configuration, when the site registers."""
    section = data.get("registration") or {}
    if not section.get("service_url"):
        return None
    return {**section, "name": "registration"}

