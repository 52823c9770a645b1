"""An IEC 61850 MMS server (libiec61850, threaded mode) for one IED model.

libiec61850 runs its own thread; write and control callbacks run there, holding the data
model lock, so they must stay short: decode, decide, hand over, return.  Updates from the
owner's thread take the model lock through ctypes (which releases the GIL while it waits).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
import os
import tempfile
from typing import Any, Callable

from relevent.iec61850 import lib as L

log = logging.getLogger("relevent.mms")


class MmsServerError(Exception):
    pass


class MmsServer:
    def __init__(self, cfg_text: str, ied_name: str, work_dir: str) -> None:
        self.lib = L.lib()
        self.ied_name = ied_name
        # One ctypes callback per handler kind for the whole server, with libiec61850's
        # `parameter` carrying an index into these tables: 40k attributes would otherwise
        # mean 40k closures and executable thunks (tens of MB, bench/README.md).
        self._writes: list[tuple[str, Callable]] = []
        self._controls: list[tuple[str, Callable, Callable]] = []
        self._write_cb = L.WriteAccessHandler(self._on_write)
        self._check_cb = L.PerformCheckHandler(self._on_check)
        self._control_cb = L.ControlHandler(self._on_control)
        self._connection_cb = L.ConnectionIndicationHandler(self._on_connection)
        self._connection_handler: Callable[[bool], None] | None = None
        self._nodes: dict[str, int] = {}
        self._missing: set[str] = set()
        fd, self.cfg_path = tempfile.mkstemp(prefix="model-", suffix=".cfg", dir=work_dir)
        with os.fdopen(fd, "w") as f:
            f.write(cfg_text)
        self.model = self.lib.ConfigFileParser_createModelFromConfigFileEx(self.cfg_path.encode())
        if not self.model:
            raise MmsServerError(f"libiec61850 rejected the generated model {self.cfg_path}")
        self.server = self.lib.IedServer_create(self.model)
        self.running = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, address: str, port: int) -> None:
        self.lib.IedServer_setLocalIpAddress(self.server, address.encode())
        self.lib.IedServer_start(self.server, port)
        if not self.lib.IedServer_isRunning(self.server):
            raise MmsServerError(f"cannot listen on {address}:{port} (in use or not permitted)")
        self.running = True

    def close(self) -> None:
        if self.server:
            if self.running:
                self.lib.IedServer_stop(self.server)
            self.lib.IedServer_destroy(self.server)
            self.server = None
        if self.model:
            self.lib.IedModel_destroy(self.model)
            self.model = None
        try:
            os.unlink(self.cfg_path)
        except OSError:
            pass

    # -- model access ---------------------------------------------------------------------------
    def node(self, ref: str) -> int:
        """Pointer to the model node `LDinst/LN.DO.DA` (the IED name is prefixed here)."""
        ptr = self._nodes.get(ref)
        if ptr is None:
            ptr = self.lib.IedModel_getModelNodeByObjectReference(self.model, (self.ied_name + ref).encode())
            if not ptr:
                raise KeyError(f"{self.ied_name}{ref} is not in the model")
            self._nodes[ref] = ptr
        return ptr

    def has(self, ref: str) -> bool:
        if ref in self._missing:
            return False
        try:
            self.node(ref)
            return True
        except KeyError:
            self._missing.add(ref)
            return False

    @contextmanager
    def model_lock(self):
        """Hold libiec61850's data model lock (never from inside a handler: it holds it)."""
        self.lib.IedServer_lockDataModel(self.server)
        try:
            yield
        finally:
            self.lib.IedServer_unlockDataModel(self.server)

    def update(self, changes: list[tuple[str, str, Any]], locked: bool = False) -> None:
        """Apply (reference, kind, value) updates atomically for readers and reports.
        kind: float | int | bool | time (ms, 0 = unset) | time_exact (also drops a finer
        fraction than ms) | quality | string.
        ``locked``: called from a handler, which already holds the model lock."""
        lib, srv = self.lib, self.server
        resolved = [(self.node(ref), kind, value) for ref, kind, value in changes]
        if not locked:
            lib.IedServer_lockDataModel(srv)
        try:
            for ptr, kind, value in resolved:
                if kind == "float":
                    lib.IedServer_updateFloatAttributeValue(srv, ptr, value)
                elif kind == "int":
                    lib.IedServer_updateInt32AttributeValue(srv, ptr, int(value))
                elif kind == "bool":
                    lib.IedServer_updateBooleanAttributeValue(srv, ptr, bool(value))
                elif kind == "time":
                    lib.IedServer_updateUTCTimeAttributeValue(srv, ptr, int(value))
                elif kind == "time_exact":
                    # updateUTCTimeAttributeValue compares in ms and keeps a client's finer
                    # fraction; this replaces the whole value.
                    mms = lib.MmsValue_newUtcTimeByMsTime(int(value))
                    lib.IedServer_updateAttributeValue(srv, ptr, mms)
                    lib.MmsValue_delete(mms)
                elif kind == "quality":
                    lib.IedServer_updateQuality(srv, ptr, int(value))
                elif kind == "string":
                    lib.IedServer_updateVisibleStringAttributeValue(srv, ptr, str(value).encode())
                else:
                    raise ValueError(f"unknown update kind {kind!r}")
        finally:
            if not locked:
                lib.IedServer_unlockDataModel(srv)

    def decode(self, mms_value: int, kind: str) -> Any:
        lib = self.lib
        if kind == "float":
            return lib.MmsValue_toFloat(mms_value)
        if kind == "int":
            return lib.MmsValue_toInt32(mms_value)
        if kind == "bool":
            return lib.MmsValue_getBoolean(mms_value)
        if kind == "time":
            return lib.MmsValue_getUtcTimeInMs(mms_value)
        if kind == "string":
            raw = lib.MmsValue_toString(mms_value)
            return raw.decode() if raw else ""
        raise ValueError(kind)

    def element(self, mms_value: int, index: int) -> int:
        return self.lib.MmsValue_getElement(mms_value, index)

    # -- handlers ------------------------------------------------------------------------------------
    def on_write(self, ref: str, handler: Callable[[int], int], complex_attribute: bool = False) -> None:
        """handler(mms_value_ptr) -> DataAccessError code; any exception refuses the write."""
        self._writes.append((ref, handler))
        install = (self.lib.IedServer_handleWriteAccessForComplexAttribute if complex_attribute
                   else self.lib.IedServer_handleWriteAccess)
        install(self.server, self.node(ref), self._write_cb, len(self._writes) - 1)

    def on_control(self, do_ref: str, check: Callable[[int, int, bool], int],
                   execute: Callable[[int, int, bool], int]) -> None:
        """check(action, ctlVal, test) -> CheckHandlerResult; execute(...) -> ControlHandlerResult."""
        self._controls.append((do_ref, check, execute))
        node, index = self.node(do_ref), len(self._controls) - 1
        self.lib.IedServer_setPerformCheckHandler(self.server, node, self._check_cb, index)
        self.lib.IedServer_setControlHandler(self.server, node, self._control_cb, index)

    def on_connection(self, handler: Callable[[bool], None]) -> None:
        """handler(connected) on every client association opened or closed."""
        self._connection_handler = handler
        self.lib.IedServer_setConnectionIndicationHandler(self.server, self._connection_cb, None)

    def _on_connection(self, _server, _conn, connected, _param):
        if self._connection_handler is not None:
            try:
                self._connection_handler(bool(connected))
            except Exception:
                log.exception("connection handler failed")

    @property
    def handler_count(self) -> int:
        return len(self._writes) + 2 * len(self._controls)

    # Callbacks run on libiec61850's thread.  A ctypes callback that raises returns 0, which
    # libiec61850 reads as an answer: catch everything.
    def _on_write(self, _da, value, _conn, index):
        ref, handler = self._writes[index or 0]
        try:
            return handler(value)
        except Exception:
            log.exception("write handler for %s failed", ref)
            return L.DATA_ACCESS_ERROR_OBJECT_VALUE_INVALID

    def _on_check(self, action, index, ctl_val, test, _interlock):
        do_ref, check, _ = self._controls[index or 0]
        try:
            return check(action, ctl_val, test)
        except Exception:
            log.exception("check handler for %s failed", do_ref)
            return L.CONTROL_OBJECT_ACCESS_DENIED

    def _on_control(self, action, index, ctl_val, test):
        do_ref, _, execute = self._controls[index or 0]
        try:
            return execute(action, ctl_val, test)
        except Exception:
            log.exception("control handler for %s failed", do_ref)
            return L.CONTROL_RESULT_FAILED

    def set_add_cause(self, action: int, cause: int) -> None:
        self.lib.ControlAction_setAddCause(action, cause)
