"""Two independent MMS clients behind one small interface, for tests that check the wire:
libiec61850's C client (SWIG) and the pure-Python open61850.  The site's server runs in
other processes, so a libiec61850 client in the test process cannot deadlock with it.

References are `LD/LN.DO.DA` plus an FC.  Writes return None or "value-invalid" /
"access-denied"; operates return (ok, addCause).
"""
from __future__ import annotations

import math
import time
from datetime import datetime, timezone

import open61850.mms as o61850
import pyiec61850.pyiec61850 as iec
from open61850.data import BoolData, FloatData, IntData, TimestampData

FC = {"ST": iec.IEC61850_FC_ST, "MX": iec.IEC61850_FC_MX, "SP": iec.IEC61850_FC_SP, "CF": iec.IEC61850_FC_CF}
IED_ERRORS = {iec.IED_ERROR_OBJECT_VALUE_INVALID: "value-invalid", iec.IED_ERROR_ACCESS_DENIED: "access-denied"}
ACCESS_ERRORS = {11: "value-invalid", 3: "access-denied"}


def mms_name(ref: str, fc: str) -> str:
    ld, _, rest = ref.partition("/")
    ln, _, path = rest.partition(".")
    return f"{ld}/{ln}${fc}${path.replace('.', '$')}"


class LibIec61850Client:
    name = "libiec61850"

    def __init__(self, host: str, port: int) -> None:
        # A fresh libiec61850 client connection to a busy server may lose its first request
        # (binding notes): connect, confirm with a read, and start again if that fails.
        for _attempt in range(20):
            self.con = iec.IedConnection_create()
            err = iec.IedConnection_connect(self.con, host, port)
            err = err[1] if isinstance(err, tuple) else err
            if err == iec.IED_ERROR_OK:
                _, err = iec.IedConnection_getServerDirectory(self.con, False)
                if err == iec.IED_ERROR_OK:
                    return
            iec.IedConnection_destroy(self.con)
            time.sleep(0.1)
        raise ConnectionError(f"cannot connect to {host}:{port}: {err}")

    def close(self) -> None:
        iec.IedConnection_close(self.con)
        iec.IedConnection_destroy(self.con)

    def _check(self, result):
        value, err = result
        if err != iec.IED_ERROR_OK:
            raise IOError(f"read failed: {err}")
        return value

    def read_int(self, ref: str, fc: str = "ST") -> int:
        return self._check(iec.IedConnection_readInt32Value(self.con, ref, FC[fc]))

    def read_float(self, ref: str, fc: str = "MX") -> float:
        return self._check(iec.IedConnection_readFloatValue(self.con, ref, FC[fc]))

    def read_bool(self, ref: str, fc: str = "ST") -> bool:
        return self._check(iec.IedConnection_readBooleanValue(self.con, ref, FC[fc]))

    def read_str(self, ref: str, fc: str = "ST") -> str:
        return self._check(iec.IedConnection_readStringValue(self.con, ref, FC[fc]))

    def _write(self, result) -> str | None:
        err = result[1] if isinstance(result, tuple) else result
        return None if err == iec.IED_ERROR_OK else IED_ERRORS.get(err, f"error {err}")

    def write_int(self, ref: str, value: int, fc: str = "SP") -> str | None:
        return self._write(iec.IedConnection_writeInt32Value(self.con, ref, FC[fc], value))

    def write_float(self, ref: str, value: float, fc: str = "SP") -> str | None:
        return self._write(iec.IedConnection_writeFloatValue(self.con, ref, FC[fc], value))

    def write_bool(self, ref: str, value: bool, fc: str = "SP") -> str | None:
        return self._write(iec.IedConnection_writeBooleanValue(self.con, ref, FC[fc], value))

    def write_time(self, ref: str, ms: int, fc: str = "SP") -> str | None:
        return self._write(iec.IedConnection_writeObject(self.con, ref, FC[fc], iec.MmsValue_newUtcTimeByMsTime(ms)))

    def operate(self, do_ref: str, value: bool, test: bool = False) -> tuple[bool, int]:
        ctl = iec.ControlObjectClient_create(do_ref, self.con)
        try:
            if test:
                iec.ControlObjectClient_setTestMode(ctl, True)
            ok = iec.ControlObjectClient_operate(ctl, iec.MmsValue_newBoolean(value), 0)
            return bool(ok), iec.ControlObjectClient_getLastApplError(ctl).addCause
        finally:
            iec.ControlObjectClient_destroy(ctl)


class Open61850Client:
    name = "open61850"

    def __init__(self, host: str, port: int) -> None:
        self.client = o61850.MmsClient.connect(host, port, timeout=10)

    def close(self) -> None:
        self.client.close()

    def _read(self, ref: str, fc: str):
        return self.client.read(mms_name(ref, fc)).value

    def read_int(self, ref: str, fc: str = "ST") -> int:
        return self._read(ref, fc)

    def read_float(self, ref: str, fc: str = "MX") -> float:
        return self._read(ref, fc)

    def read_bool(self, ref: str, fc: str = "ST") -> bool:
        return self._read(ref, fc)

    def read_str(self, ref: str, fc: str = "ST") -> str:
        return self._read(ref, fc)

    def read_time_ms(self, ref: str, fc: str = "ST") -> int:
        return int(self._read(ref, fc).timestamp() * 1000)

    def quality_invalid(self, ref: str, fc: str = "ST") -> bool:
        bits = self.client.read(mms_name(ref, fc)).value
        return (bits[0] & 0xC0) == 0x40  # validity: first two bits, 01 = invalid

    def _write(self, ref: str, fc: str, data) -> str | None:
        try:
            self.client.write(mms_name(ref, fc), data)
            return None
        except o61850.DataAccessError as exc:
            return ACCESS_ERRORS.get(exc.code, f"error {exc.code}")

    def write_int(self, ref: str, value: int, fc: str = "SP") -> str | None:
        return self._write(ref, fc, IntData(value))

    def write_float(self, ref: str, value: float, fc: str = "SP") -> str | None:
        return self._write(ref, fc, FloatData(value))

    def write_bool(self, ref: str, value: bool, fc: str = "SP") -> str | None:
        return self._write(ref, fc, BoolData(value))

    def write_time(self, ref: str, ms: int, fc: str = "SP") -> str | None:
        return self._write(ref, fc, TimestampData(datetime.fromtimestamp(ms / 1000, tz=timezone.utc)))

    def operate(self, do_ref: str, value: bool, test: bool = False) -> tuple[bool, int]:
        try:
            o61850.operate(self.client, do_ref, value, test=test)
            return True, 0
        except o61850.ControlError as exc:
            err = exc.last_appl_error
            return False, getattr(err, "add_cause", -1) if err is not None else -1


CLIENTS = (LibIec61850Client, Open61850Client)


def isnan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)
