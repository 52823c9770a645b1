"""A controlling station (an IEC 60870-5-104 client) written from the standard's frame
layout with sockets and struct, for the tests and the bench: the peer of our controlled
station must not be our code path nor the library the site uses (c104 / lib60870).

Only what the tests need: STARTDT, TESTFR answers, I-frames with their send and receive
sequence numbers, S-frame acknowledgements, and the ASDUs of set-points (C_SE_NB_1,
C_SE_NC_1, C_SE_TC_1), single commands (C_SC_NA_1), general interrogation (C_IC_NA_1) and
clock synchronisation (C_CS_NA_1), in plain TCP or over TLS (Python's `ssl`, OpenSSL: c104
2.2.1's own client cannot verify a server without a host name, mbedtls -0x5D80); received ASDUs are decoded for the monitoring types a
controlled station sends (M_SP_NA_1, M_ME_NB_1, M_ME_NC_1, their time-tagged forms, M_EI_NA_1)
and for the command types it mirrors back (ACT_CON, ACT_TERM, the negative COTs).
"""
from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

START = 0x68
STARTDT_ACT, STARTDT_CON = 0x07, 0x0B
STOPDT_ACT, STOPDT_CON = 0x13, 0x23
TESTFR_ACT, TESTFR_CON = 0x43, 0x83

# type identifications
M_SP_NA_1, M_ME_NB_1, M_ME_NC_1, M_SP_TB_1, M_ME_TE_1, M_ME_TF_1 = 1, 11, 13, 30, 35, 36
M_EI_NA_1 = 70
C_SC_NA_1, C_SE_NA_1, C_SE_NB_1, C_SE_NC_1, C_SE_TC_1 = 45, 48, 49, 50, 63
C_IC_NA_1, C_CS_NA_1 = 100, 103

# causes of transmission
PERIODIC, SPONTANEOUS, INITIALISED, REQUEST = 1, 3, 4, 5
ACT, ACT_CON, DEACT, DEACT_CON, ACT_TERM = 6, 7, 8, 9, 10
RETURN_REMOTE, INTERROGATED = 11, 20
UNKNOWN_TYPE, UNKNOWN_COT, UNKNOWN_CA, UNKNOWN_IOA = 44, 45, 46, 47


# -- CP56Time2a ------------------------------------------------------------------------------------
def cp56(t_ms: int) -> bytes:
    """Seven octets: ms within the minute, minute, hour, day of month and weekday, month, year."""
    d = datetime.fromtimestamp(t_ms / 1000, tz=timezone.utc)
    ms = d.second * 1000 + d.microsecond // 1000
    return struct.pack("<HBBBBB", ms, d.minute, d.hour, d.day | (d.isoweekday() << 5), d.month, d.year % 100)


def from_cp56(b: bytes) -> tuple[int, bool]:
    """(ms since the epoch, invalid flag) of a CP56Time2a (years 2000..2099)."""
    ms, minute, hour, day, month, year = struct.unpack("<HBBBBB", b)
    d = datetime(2000 + (year & 0x7F), month & 0x0F, day & 0x1F, hour & 0x1F, minute & 0x3F, ms // 1000,
                 (ms % 1000) * 1000, tzinfo=timezone.utc)
    return int(d.timestamp() * 1000), bool(minute & 0x80)


# -- ASDUs -----------------------------------------------------------------------------------------
@dataclass
class Obj:
    ioa: int
    value: Any = None
    quality: int = 0          # QDS / SIQ quality bits (IV 0x80, NT 0x40, SB 0x20, BL 0x10, OV 0x01)
    time_ms: int | None = None
    raw: bytes = b""

    @property
    def invalid(self) -> bool:
        return bool(self.quality & 0x80)


@dataclass
class Asdu:
    type: int
    cot: int
    negative: bool
    test: bool
    oa: int
    ca: int
    objects: list[Obj] = field(default_factory=list)
    at: float = 0.0           # time.monotonic() when received

    def obj(self, ioa: int) -> Obj | None:
        return next((o for o in self.objects if o.ioa == ioa), None)


def encode_asdu(type_id: int, cot: int, ca: int, ioa: int, element: bytes, *, oa: int = 0, negative: bool = False,
                test: bool = False) -> bytes:
    cot_octet = cot | (0x40 if negative else 0) | (0x80 if test else 0)
    return struct.pack("<BBBBH", type_id, 1, cot_octet, oa, ca) + ioa.to_bytes(3, "little") + element


# element size per type for the decoder (without the IOA)
_SIZES = {M_SP_NA_1: 1, M_ME_NB_1: 3, M_ME_NC_1: 5, M_SP_TB_1: 8, M_ME_TE_1: 10, M_ME_TF_1: 12, M_EI_NA_1: 1,
          C_SC_NA_1: 1, C_SE_NA_1: 3, C_SE_NB_1: 3, C_SE_NC_1: 5, C_SE_TC_1: 12, C_IC_NA_1: 1, C_CS_NA_1: 7}


def _element(type_id: int, b: bytes) -> tuple[Any, int, int | None]:
    """(value, quality, time ms) of one information element."""
    if type_id in (M_SP_NA_1, M_SP_TB_1):
        t = from_cp56(b[1:8])[0] if type_id == M_SP_TB_1 else None
        return bool(b[0] & 0x01), b[0] & 0xF0, t
    if type_id in (M_ME_NB_1, M_ME_TE_1):
        t = from_cp56(b[3:10])[0] if type_id == M_ME_TE_1 else None
        return struct.unpack("<h", b[:2])[0], b[2], t
    if type_id in (M_ME_NC_1, M_ME_TF_1):
        t = from_cp56(b[5:12])[0] if type_id == M_ME_TF_1 else None
        return struct.unpack("<f", b[:4])[0], b[4], t
    if type_id == C_SC_NA_1:
        return bool(b[0] & 0x01), b[0] & 0x80, None          # quality slot: the select bit
    if type_id in (C_SE_NA_1, C_SE_NB_1):
        return struct.unpack("<h", b[:2])[0], b[2], None
    if type_id == C_SE_NC_1:
        return struct.unpack("<f", b[:4])[0], b[4], None
    if type_id == C_SE_TC_1:
        return struct.unpack("<f", b[:4])[0], b[4], from_cp56(b[5:12])[0]
    if type_id == C_CS_NA_1:
        return None, 0, from_cp56(b[:7])[0]
    return b[0] if b else None, 0, None


def decode_asdu(b: bytes) -> Asdu:
    type_id, vsq, cot_octet, oa, ca = struct.unpack("<BBBBH", b[:6])
    asdu = Asdu(type_id, cot_octet & 0x3F, bool(cot_octet & 0x40), bool(cot_octet & 0x80), oa, ca,
                at=time.monotonic())
    count, sequence = vsq & 0x7F, bool(vsq & 0x80)
    size = _SIZES.get(type_id)
    rest = b[6:]
    if size is None:
        asdu.objects.append(Obj(int.from_bytes(rest[:3], "little"), raw=rest[3:]))
        return asdu
    if sequence:
        base = int.from_bytes(rest[:3], "little")
        for i in range(count):
            chunk = rest[3 + i * size: 3 + (i + 1) * size]
            value, quality, t = _element(type_id, chunk)
            asdu.objects.append(Obj(base + i, value, quality, t, chunk))
        return asdu
    for i in range(count):
        chunk = rest[i * (3 + size): (i + 1) * (3 + size)]
        value, quality, t = _element(type_id, chunk[3:])
        asdu.objects.append(Obj(int.from_bytes(chunk[:3], "little"), value, quality, t, chunk[3:]))
    return asdu


# -- the connection ------------------------------------------------------------------------------------
class Peer:
    """One TCP connection to a controlled station.  Not thread-safe: one test drives it."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, ack_every: int = 4,
                 tls: ssl.SSLContext | None = None) -> None:
        """`tls`: a client context (its certificate loaded): the handshake is made here."""
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.timeout = timeout
        self.ack_every = ack_every
        self.ns = 0                     # our next send sequence number
        self.nr = 0                     # the next one we expect (= received I-frames, mod 2^15)
        self.unacked = 0
        self.buf = b""
        self.seen: list[Asdu] = []      # every ASDU received, in order
        self.u_frames: list[int] = []

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- frames -----------------------------------------------------------------------------
    def _send_u(self, code: int) -> None:
        self.sock.sendall(bytes((START, 4, code, 0, 0, 0)))

    def ack(self) -> None:
        """S-frame: everything received so far is acknowledged."""
        self.sock.sendall(struct.pack("<BBHH", START, 4, 0x0001, (self.nr << 1) & 0xFFFF))
        self.unacked = 0

    def send_asdu(self, asdu: bytes) -> None:
        apci = struct.pack("<BBHH", START, 4 + len(asdu), (self.ns << 1) & 0xFFFF, (self.nr << 1) & 0xFFFF)
        self.sock.sendall(apci + asdu)
        self.ns = (self.ns + 1) % 32768
        self.unacked = 0                # an I-frame acknowledges too

    def _read_frame(self, deadline: float) -> tuple[str, Any] | None:
        while True:
            if len(self.buf) >= 2:
                if self.buf[0] != START:
                    raise AssertionError(f"not an APCI start octet: {self.buf[:8].hex()}")
                length = self.buf[1]
                if len(self.buf) >= 2 + length:
                    frame, self.buf = self.buf[2:2 + length], self.buf[2 + length:]
                    return self._frame(frame)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                raise ConnectionError("the controlled station closed the connection")
            self.buf += chunk

    def _frame(self, frame: bytes) -> tuple[str, Any]:
        c1 = frame[0]
        if c1 & 0x01 == 0:                               # I-frame
            ns = struct.unpack("<H", frame[0:2])[0] >> 1
            if ns != self.nr:
                raise AssertionError(f"I-frame N(S)={ns}, expected {self.nr}")
            self.nr = (self.nr + 1) % 32768
            self.unacked += 1
            if self.unacked >= self.ack_every:
                self.ack()
            asdu = decode_asdu(frame[4:])
            self.seen.append(asdu)
            return "I", asdu
        if c1 & 0x03 == 0x01:                            # S-frame
            return "S", struct.unpack("<H", frame[2:4])[0] >> 1
        self.u_frames.append(c1)                          # U-frame
        if c1 == TESTFR_ACT:
            self._send_u(TESTFR_CON)
        return "U", c1

    # -- conversations ------------------------------------------------------------------------
    def startdt(self) -> None:
        self._send_u(STARTDT_ACT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            got = self._read_frame(deadline)
            if got == ("U", STARTDT_CON):
                return
        raise AssertionError("no STARTDT con")

    def stopdt(self) -> None:
        self._send_u(STOPDT_ACT)

    def wait_for(self, predicate: Callable[[Asdu], bool], timeout: float | None = None, since: int = 0) -> Asdu:
        """The first ASDU (at index `since` or later of `seen`) that matches, reading on until
        `timeout`; received frames are acknowledged as they come."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        index = since
        while True:
            while index < len(self.seen):
                asdu = self.seen[index]
                index += 1
                if predicate(asdu):
                    if self.unacked:
                        self.ack()
                    return asdu
            got = self._read_frame(deadline)
            if got is None:
                if self.unacked:
                    self.ack()
                raise AssertionError(f"nothing matched in {timeout if timeout is not None else self.timeout} s; "
                                     f"seen since: {[describe(a) for a in self.seen[since:]]}")

    def collect(self, seconds: float) -> list[Asdu]:
        """Everything received in the next `seconds`."""
        start = len(self.seen)
        deadline = time.monotonic() + seconds
        while self._read_frame(deadline) is not None:
            pass
        if self.unacked:
            self.ack()
        return self.seen[start:]

    # -- commands ------------------------------------------------------------------------------
    def command(self, type_id: int, ca: int, ioa: int, element: bytes, cot: int = ACT) -> int:
        """Send one command ASDU; returns the index in `seen` from which its answers come."""
        mark = len(self.seen)
        self.send_asdu(encode_asdu(type_id, cot, ca, ioa, element))
        return mark

    def answers(self, mark: int, type_id: int, ioa: int, cots: tuple, timeout: float | None = None) -> Asdu:
        return self.wait_for(lambda a: a.type == type_id and a.cot in cots and
                             (not a.objects or a.objects[0].ioa == ioa), timeout, since=mark)

    def setpoint_float(self, ca: int, ioa: int, value: float, select: bool = False) -> int:
        return self.command(C_SE_NC_1, ca, ioa, struct.pack("<fB", value, 0x80 if select else 0))

    def setpoint_scaled(self, ca: int, ioa: int, value: int) -> int:
        return self.command(C_SE_NB_1, ca, ioa, struct.pack("<hB", value, 0))

    def setpoint_float_time(self, ca: int, ioa: int, value: float, t_ms: int) -> int:
        return self.command(C_SE_TC_1, ca, ioa, struct.pack("<fB", value, 0) + cp56(t_ms))

    def single_command(self, ca: int, ioa: int, on: bool) -> int:
        return self.command(C_SC_NA_1, ca, ioa, bytes((0x01 if on else 0x00,)))

    def interrogation(self, ca: int, qoi: int = 20) -> int:
        return self.command(C_IC_NA_1, ca, 0, bytes((qoi,)))

    def clock_sync(self, ca: int, t_ms: int) -> int:
        return self.command(C_CS_NA_1, ca, 0, cp56(t_ms))

    def general_interrogation(self, ca: int, timeout: float | None = None) -> dict[int, tuple[int, Obj]]:
        """C_IC_NA_1 for the station: {ioa: (type, object)} of every point answered between
        its ACT_CON and its ACT_TERM."""
        mark = self.interrogation(ca)
        con = self.answers(mark, C_IC_NA_1, 0, (ACT_CON,), timeout)
        assert not con.negative, describe(con)
        self.answers(mark, C_IC_NA_1, 0, (ACT_TERM,), timeout)
        points = {}
        for a in self.seen[mark:]:
            if a.cot == INTERROGATED:
                for o in a.objects:
                    points[o.ioa] = (a.type, o)
        return points


def describe(a: Asdu) -> str:
    objs = ", ".join(f"{o.ioa}={o.value!r}" + (f"/q{o.quality:#x}" if o.quality else "") for o in a.objects[:4])
    return f"type {a.type} cot {a.cot}{' neg' if a.negative else ''} ca {a.ca} [{objs}]"
