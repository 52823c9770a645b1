"""Model updates written by a thread outside Python (switcher.c): at their instant, or at once.

The MMS endpoint arms, per controller, the updates of the state its controller announced for
its next boundary; the C thread writes them at that instant without needing the GIL, and
reports what it applied through `collect()`, which the endpoint uses to record them.  Every
other state the endpoint applies is pushed (`push`) and written by the same thread as soon
as it has the data model lock, so no Python thread holds that lock (clients' reads need it).
Every method may be called from any thread, also after `close` (then they do nothing).
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import os
import threading
from ctypes import POINTER, Structure, c_char_p, c_double, c_int, c_int64, c_void_p
from dataclasses import dataclass
from typing import Any, Callable

from relevent.iec61850.server import MmsServer

log = logging.getLogger("relevent.mms")

KINDS = {"float": 0, "int": 1, "bool": 2, "time": 3, "time_exact": 4, "quality": 5, "string": 6}
COLLECT_MAX = 1024


class _Functions(Structure):
    _fields_ = [(name, c_void_p) for name in (
        "lock", "unlock", "update_float", "update_int32", "update_bool", "update_utc_time",
        "update_quality", "update_value", "new_utc_time", "delete_value", "update_string")]


class _Applied(Structure):
    _fields_ = [("key", c_int64), ("at_ms", c_int64), ("woke_ns", c_int64), ("locked_ns", c_int64),
                ("outputs_ns", c_int64), ("done_ns", c_int64), ("batch", c_int64)]


@dataclass(frozen=True)
class Applied:
    """A switch the C thread wrote: its key, instant (ms) and when it woke, had the model
    lock, had written the outputs and everything (ns since the epoch)."""
    key: int
    at_ms: int
    woke_ns: int
    locked_ns: int
    outputs_ns: int
    done_ns: int
    batch: int


def library_path() -> str:
    here = os.path.dirname(__file__)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_switcher" + suffix)
        if os.path.exists(path):
            return path
    raise OSError(f"the switcher library is not built in {here}: reinstall relevent (pip install -e .)")


_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(library_path())
        lib.sw_create.restype = c_void_p
        lib.sw_create.argtypes = [c_void_p, POINTER(_Functions), c_int, c_int, c_int, POINTER(c_int)]
        lib.sw_arm.restype = c_int
        lib.sw_arm.argtypes = [c_void_p, c_int64, c_int64, c_int, c_int, POINTER(c_int), POINTER(c_void_p),
                               POINTER(c_double), POINTER(c_int64), POINTER(c_char_p)]
        lib.sw_push.restype = c_int
        lib.sw_push.argtypes = [c_void_p, c_int, c_int, POINTER(c_int), POINTER(c_void_p), POINTER(c_double),
                                POINTER(c_int64), POINTER(c_char_p)]
        lib.sw_drain.restype = c_int
        lib.sw_drain.argtypes = [c_void_p]
        lib.sw_cancel.restype = c_int
        lib.sw_cancel.argtypes = [c_void_p, c_int64]
        lib.sw_collect.restype = c_int
        lib.sw_collect.argtypes = [c_void_p, POINTER(_Applied), c_int, POINTER(c_int64)]
        lib.sw_serve.restype = None
        lib.sw_serve.argtypes = [c_void_p, POINTER(c_int), c_int, c_int]
        for name in ("sw_stop", "sw_free"):
            getattr(lib, name).restype = None
            getattr(lib, name).argtypes = [c_void_p]
        _lib = lib
    return _lib


class Switcher:
    def __init__(self, server: MmsServer, nice: int, lead_ms: int, on_applied: Callable[[], None],
                 name: str = "switcher") -> None:
        """The C thread runs at `nice` and raises every thread of the process to it from
        `lead_ms` before a switch.  After it applied some, a Python thread calls
        `on_applied()` (which should take the model lock and `collect()`)."""
        self.lib = _load()
        self.server = server
        iec = server.lib
        addr = lambda fn: ctypes.cast(fn, c_void_p).value  # noqa: E731
        self._functions = _Functions(  # kept alive as long as the thread
            addr(iec.IedServer_lockDataModel), addr(iec.IedServer_unlockDataModel),
            addr(iec.IedServer_updateFloatAttributeValue), addr(iec.IedServer_updateInt32AttributeValue),
            addr(iec.IedServer_updateBooleanAttributeValue), addr(iec.IedServer_updateUTCTimeAttributeValue),
            addr(iec.IedServer_updateQuality), addr(iec.IedServer_updateAttributeValue),
            addr(iec.MmsValue_newUtcTimeByMsTime), addr(iec.MmsValue_delete),
            addr(iec.IedServer_updateVisibleStringAttributeValue))
        allowed = c_int(0)
        self.events = os.eventfd(0, os.EFD_CLOEXEC)
        self.handle = self.lib.sw_create(server.server, ctypes.byref(self._functions), nice, lead_ms,
                                         self.events, ctypes.byref(allowed))
        if not self.handle:
            os.close(self.events)
            raise OSError("cannot start the switcher thread")
        self.boosts = bool(allowed.value)
        if not self.boosts and nice < os.getpriority(os.PRIO_PROCESS, 0):
            log.warning("mms switches at normal priority (cannot set nice %d: needs CAP_SYS_NICE)", nice)
        self._buffer = (_Applied * COLLECT_MAX)()
        self.lost = 0
        self._closed = False
        self._guard = threading.Lock()  # the handle's lifetime: no call runs while close frees it
        self._on_applied = on_applied
        self._follower = threading.Thread(target=self._follow, name=f"{name}-follower", daemon=True)
        self._follower.start()

    def _follow(self) -> None:
        while True:
            os.eventfd_read(self.events)  # blocks without the GIL
            if self._closed:
                return
            try:
                self._on_applied()
            except Exception:  # the switches go on; the next call catches up
                log.exception("switcher: recording applied switches")

    def serve(self, tids: list[int], tail_ms: int) -> None:
        """Keep these threads (libiec61850's server threads) at the switch priority for
        `tail_ms` after every switch, so clients reading it are answered first."""
        with self._guard:
            if self.handle is not None:
                self.lib.sw_serve(self.handle, (c_int * len(tids))(*tids), len(tids), tail_ms)

    def _arrays(self, updates: list[tuple[str, str, Any]]) -> tuple:
        n = len(updates)
        kinds, attrs = (c_int * n)(), (c_void_p * n)()
        numbers, integers, texts = (c_double * n)(), (c_int64 * n)(), (c_char_p * n)()
        for i, (ref, kind, value) in enumerate(updates):
            kinds[i] = KINDS[kind]
            attrs[i] = self.server.node(ref)
            if kind == "float":
                numbers[i] = float(value)
            elif kind == "string":
                texts[i] = str(value).encode()
            else:
                integers[i] = int(value)
        return kinds, attrs, numbers, integers, texts

    def arm(self, key: int, at_ms: int, outputs: list[tuple[str, str, Any]],
            rest: list[tuple[str, str, Any]]) -> None:
        """Write `outputs` then `rest` at `at_ms`, instead of whatever is still armed under
        `key`.  (reference, kind, value) as for MmsServer.update."""
        arrays = self._arrays(outputs + rest)
        with self._guard:
            if self.handle is not None and self.lib.sw_arm(self.handle, key, int(at_ms), len(outputs) + len(rest),
                                                           len(outputs), *arrays) != 0:
                raise MemoryError("switcher: cannot arm a switch")

    def push(self, outputs: list[tuple[str, str, Any]], rest: list[tuple[str, str, Any]] = ()) -> None:
        """Write `outputs` then `rest` as soon as the thread has the model lock, after all
        pushed before and before any switch armed after this call."""
        rest = list(rest)
        arrays = self._arrays(outputs + rest)
        with self._guard:
            if self.handle is not None and self.lib.sw_push(self.handle, len(outputs) + len(rest), len(outputs),
                                                            *arrays) != 0:
                raise MemoryError("switcher: cannot push updates")

    def drain(self) -> int:
        """Model lock held (a libiec61850 handler): write what is still pushed, here and
        now, so what the caller writes next comes after it.  Returns how many pushes."""
        with self._guard:
            return 0 if self.handle is None else self.lib.sw_drain(self.handle)

    def cancel(self, key: int) -> bool:
        """True if a switch was armed under `key`: it will not happen.  False: none was,
        or the thread took it: it is written before anything pushed after this call (and
        is written already if the caller holds the model lock)."""
        with self._guard:
            return self.handle is not None and bool(self.lib.sw_cancel(self.handle, key))

    def collect(self) -> list[Applied]:
        """The switches applied since the last call, oldest first."""
        out: list[Applied] = []
        lost = c_int64(0)
        with self._guard:
            while self.handle is not None:
                n = self.lib.sw_collect(self.handle, self._buffer, COLLECT_MAX, ctypes.byref(lost))
                self.lost += lost.value
                out += [Applied(a.key, a.at_ms, a.woke_ns, a.locked_ns, a.outputs_ns, a.done_ns, a.batch)
                        for a in self._buffer[:n]]
                if n < COLLECT_MAX:
                    break
        return out

    def close(self) -> None:
        """Stop the thread (never with the model lock held: the thread may be waiting for
        it), then free it."""
        if self.handle:
            self.lib.sw_stop(self.handle)
            with self._guard:
                if self.handle is not None:
                    self.lib.sw_free(self.handle)
                    self.handle = None
            self._closed = True
            os.eventfd_write(self.events, 1)
            if self._follower is not threading.current_thread():
                self._follower.join(timeout=2)
            if not self._follower.is_alive():
                os.close(self.events)
