"""Two independent MMS clients behind one small interface, for tests that check the wire:
libiec61850's C client (SWIG) and the pure-Python open61850.  The site's server runs in
other processes, so a libiec61850 client in the test process cannot deadlock with it.

References are `LD/LN.DO.DA` plus an FC.  Writes return None or "value-invalid" /
"access-denied"; operates return (ok, addCause).  A client may present an ACSE password
(`password=`), and libiec61850's client may speak TLS (`tls=TlsClient(...)`); a server
that refuses the association raises AssociationRefused.
"""
from __future__ import annotations

import math
import socket
import threading
import time
from datetime import datetime, timezone

import open61850.mms as o61850
import open61850.mms.association as o61850_association
from open61850 import ber
import pyiec61850.pyiec61850 as iec
from open61850.data import BoolData, FloatData, IntData, TimestampData, VisibleStringData
from relevent.clock import now_ms

FC = {"ST": iec.IEC61850_FC_ST, "MX": iec.IEC61850_FC_MX, "SP": iec.IEC61850_FC_SP, "CF": iec.IEC61850_FC_CF}
IED_ERRORS = {iec.IED_ERROR_OBJECT_VALUE_INVALID: "value-invalid", iec.IED_ERROR_ACCESS_DENIED: "access-denied"}
ACCESS_ERRORS = {11: "value-invalid", 3: "access-denied"}


class AssociationRefused(ConnectionError):
    """The server refused the association (ACSE authentication failed or not allowed)."""


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def mms_name(ref: str, fc: str) -> str:
    ld, _, rest = ref.partition("/")
    ln, _, path = rest.partition(".")
    return f"{ld}/{ln}${fc}${path.replace('.', '$')}"


class TlsClient:
    """What a libiec61850 client offers over TLS (IEC 62351-3): the CA bundle it verifies
    the server with, its own certificate and key (None: none), the TLS versions it offers.
    libiec61850's client keeps its TLSConfiguration: a fresh one per connection attempt."""

    def __init__(self, ca: str, cert: str | None = None, key: str | None = None,
                 max_version: int | None = None) -> None:
        self.ca, self.cert, self.key, self.max_version = ca, cert, key, max_version

    def config(self):
        cfg = iec.TLSConfiguration_create()
        iec.TLSConfiguration_setClientMode(cfg)
        assert iec.TLSConfiguration_addCACertificateFromFile(cfg, self.ca)
        if self.cert:
            assert iec.TLSConfiguration_setOwnCertificateFromFile(cfg, self.cert)
            assert iec.TLSConfiguration_setOwnKeyFromFile(cfg, self.key, None)
        iec.TLSConfiguration_setChainValidation(cfg, True)
        if self.max_version is not None:
            iec.TLSConfiguration_setMaxTlsVersion(cfg, self.max_version)
        return cfg


class LibIec61850Client:
    name = "libiec61850"

    def __init__(self, host: str, port: int, password: str | None = None, tls: "TlsClient | None" = None) -> None:
        # A fresh libiec61850 client connection to a busy server may lose its first request
        # (binding notes): connect, confirm with a read, and start again if that fails.
        for _attempt in range(20):
            self.con = iec.IedConnection_createWithTlsSupport(tls.config()) if tls else iec.IedConnection_create()
            if password is not None:
                auth = iec.AcseAuthenticationParameter_create()
                iec.AcseAuthenticationParameter_setAuthMechanism(auth, iec.ACSE_AUTH_PASSWORD)
                iec.AcseAuthenticationParameter_setPassword(auth, password)
                params = iec.MmsConnection_getIsoConnectionParameters(iec.IedConnection_getMmsConnection(self.con))
                iec.IsoConnectionParameters_setAcseAuthenticationParameter(params, auth)
            err = iec.IedConnection_connect(self.con, host, port)
            err = err[1] if isinstance(err, tuple) else err
            if err == iec.IED_ERROR_ACCESS_DENIED or err == iec.IED_ERROR_CONNECTION_REJECTED and _listening(host, port):
                iec.IedConnection_destroy(self.con)  # (rejected while listening: by the association)
                raise AssociationRefused(f"{host}:{port} refused the association: error {err}")
            if err == iec.IED_ERROR_OK:
                _, err = iec.IedConnection_getServerDirectory(self.con, False)
                if err == iec.IED_ERROR_OK:
                    return
            iec.IedConnection_destroy(self.con)
            time.sleep(0.1)
        raise ConnectionError(f"cannot connect to {host}:{port}: {err}")

    def close(self) -> None:
        if self.con is not None:  # (a second close is a no-op)
            iec.IedConnection_close(self.con)
            iec.IedConnection_destroy(self.con)
            self.con = None

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

    def write_str(self, ref: str, value: str, fc: str = "SP") -> str | None:
        return self._write(iec.IedConnection_writeVisibleStringValue(self.con, ref, FC[fc], value))

    def operate(self, do_ref: str, value: bool, test: bool = False) -> tuple[bool, int]:
        ctl = iec.ControlObjectClient_create(do_ref, self.con)
        try:
            if test:
                iec.ControlObjectClient_setTestMode(ctl, True)
            ok = iec.ControlObjectClient_operate(ctl, iec.MmsValue_newBoolean(value), 0)
            return bool(ok), iec.ControlObjectClient_getLastApplError(ctl).addCause
        finally:
            iec.ControlObjectClient_destroy(ctl)


# open61850 proposes no ACSE authentication: for a password, its AARQ gets the three fields
# of ISO 8650-1 password authentication (sender-acse-requirements [10] = authentication,
# mechanism-name [11] = 2.2.3.1, calling-authentication-value [12] = charstring [0]) before
# its user information [30], while this client associates.
_ASSOCIATING = threading.Lock()
_PASSWORD_MECHANISM = (2, 2, 3, 1)


def _aarq_with_password(build, password: bytes):
    def aarq(params) -> bytes:
        fields = list(ber.iter_tlvs(ber.decode_tlv(build(params)).value))
        auth = (ber.encode_tlv(0x8A, b"\x07\x80") + ber.encode_tlv(0x8B, ber.encode_oid(_PASSWORD_MECHANISM))
                + ber.encode_tlv(0xAC, ber.encode_tlv(0x80, password)))
        body = b"".join(ber.encode_tlv(f.tag, f.value) for f in fields if f.tag != 0xBE) + auth
        body += b"".join(ber.encode_tlv(f.tag, f.value) for f in fields if f.tag == 0xBE)
        return ber.encode_tlv(0x60, body)
    return aarq


class Open61850Client:
    name = "open61850"

    def __init__(self, host: str, port: int, password: str | None = None) -> None:
        with _ASSOCIATING:
            original = o61850_association.aarq
            if password is not None:
                o61850_association.aarq = _aarq_with_password(original, password.encode())
            try:
                self.client = o61850.MmsClient.connect(host, port, timeout=10)
            except o61850.AssociationError as exc:
                raise AssociationRefused(f"{host}:{port} refused the association: {exc}") from exc
            except o61850.MmsConnectionError as exc:
                if "during association" in str(exc):
                    raise AssociationRefused(f"{host}:{port} refused the association: {exc}") from exc
                raise
            finally:
                o61850_association.aarq = original

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

    def write_str(self, ref: str, value: str, fc: str = "SP") -> str | None:
        return self._write(ref, fc, VisibleStringData(value))

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


def write_schedule(c, ref: str, values: list, *, interval_s: int = 1, prio: int = 20,
                   start_ms: int | None = None, start_in_ms: int | None = None) -> int | None:
    """Set up the schedule `ref` (`LD/Kind_FSCHnn`) over MMS as a central system does: NumEntr,
    SchdIntv, SchdPrio, the values (ValSPGnnn for OnOff, ValASGnnn.setMag.f otherwise) and,
    given, StrTm01: `start_ms`, or `start_in_ms` after the other writes are done (they take a
    while on a loaded machine).  Each write must be accepted.  Returns the start written.
    Enabling it is the caller's step."""
    for attr, v in (("NumEntr", len(values)), ("SchdIntv", interval_s), ("SchdPrio", prio)):
        assert c.write_int(f"{ref}.{attr}.setVal", v) is None, attr
    boolean = ref.rsplit("/", 1)[-1].startswith("OnOff_")
    for i, v in enumerate(values, start=1):
        if boolean:
            assert c.write_bool(f"{ref}.ValSPG{i:03d}.setVal", v) is None, i
        else:
            assert c.write_float(f"{ref}.ValASG{i:03d}.setMag.f", v) is None, i
    if start_in_ms is not None:
        start_ms = now_ms() + start_in_ms
    if start_ms is not None:
        assert c.write_time(f"{ref}.StrTm01.setTm", start_ms) is None, "StrTm01"
    return start_ms
