"""A 90-10 scheduling client for any IEC 61850 server with the FSCH/FSCC layout (ours, the
ReLevENT reference server, a vendor's), on open61850: `relevent schedule ...`.

One read request fetches a whole schedule (read_many), one write request sets it up
(write_many), so `show` and `write` cost one round trip each.
"""
from __future__ import annotations

import math
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import open61850.mms as mms
from open61850.data import BoolData, FloatData, IntData, TimestampData

from relevent.scheduling.schedule import EnaErr, State

KINDS = ("ActPow", "MaxPow", "OnOff")


def name(ld: str, ln: str, fc: str, path: str) -> str:
    return f"{ld}/{ln}${fc}${path.replace('.', '$')}"


def schedule_ln(kind: str, number: str) -> str:
    """'3' -> ActPow_FSCH03; 'res' or 'R' -> ActPow_Res_FSCH01."""
    if number.lower() in ("r", "res", "reserve"):
        return f"{kind}_Res_FSCH01"
    return f"{kind}_FSCH{int(number):02d}"


def parse_time(text: str, now: float | None = None) -> datetime:
    """ISO 8601 (UTC if no zone) or +SECONDS from now."""
    if text.startswith("+"):
        return datetime.fromtimestamp((now or time.time()) + float(text[1:]), tz=timezone.utc)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class ClientError(Exception):
    pass


@dataclass
class Target:
    host: str
    port: int
    ld: str | None = None
    tls: ssl.SSLContext | None = None   # MMS over TLS (IEC 62351-3): the server verified, our certificate offered


def tls_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A client context for MMS over TLS: the server's certificate verified against `ca`
    (its name or address checked), `cert`/`key` offered as the client certificate."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def _connect_tls(target: Target, timeout: float) -> "mms.MmsClient":
    """open61850's connect over a TLS socket: it makes its own plain socket, so its steps
    are taken here on ours (COTP connection request and confirm in TPKTs, then the MMS
    association).  Pinned to open61850 0.9 (pyproject); tests/test_tls_mms.py runs it."""
    from open61850.mms import client as oc, transport as ot

    raw = socket.create_connection((target.host, target.port), timeout=timeout)
    try:
        sock = target.tls.wrap_socket(raw, server_hostname=target.host)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ot.send_tpkt(sock, ot.connection_request(calling_tsap=b"\x00\x01", called_tsap=b"\x00\x01"))
        cc = ot.recv_tpkt(sock)
        if cc is None or len(cc) < 2 or cc[1] & 0xF0 != ot._CC:
            raise mms.MmsConnectionError("no COTP connection confirm over TLS")
        sock.settimeout(None)
        conn = ot.IsoConnection(sock, tpdu_size=ot.IsoConnection._negotiated_tpdu_size(cc))
    except BaseException:
        raw.close()
        raise
    try:
        params = oc.AssociationParameters()
        conn.send(oc.association_request(params))
        response = oc._recv_with_timeout(conn, timeout)
        if response is None:
            raise mms.MmsConnectionError("connection closed during association")
        accepted = oc.decode_association_response(response)
    except BaseException:
        conn.close()
        raise
    client = mms.MmsClient(conn, request_timeout=timeout, association=accepted)
    client._start()
    return client


class ScheduleClient:
    def __init__(self, target: Target, timeout: float = 10.0) -> None:
        try:
            if target.tls is not None:
                self.c = _connect_tls(target, timeout)
            else:
                self.c = mms.MmsClient.connect(target.host, target.port, timeout=timeout)
        except (mms.MmsError, OSError) as exc:
            raise ClientError(f"cannot connect to {target.host}:{target.port}"
                              f"{' over TLS' if target.tls else ''}: {exc}") from None
        self.ld = target.ld or self._single_ld()

    def close(self) -> None:
        self.c.close()

    def _single_ld(self) -> str:
        lds = [d for d in self.c.get_name_list(mms.OBJECT_CLASS_DOMAIN)
               if any(n.startswith(f"{k}_FSCC1") for k in KINDS for n in self._lns(d))]
        if len(lds) != 1:
            raise ClientError(f"the server has {len(lds)} scheduling logical devices "
                              f"({', '.join(lds) or 'none'}): choose one with --ld")
        return lds[0]

    def _lns(self, domain: str) -> list[str]:
        return [n for n in self.c.get_name_list(mms.OBJECT_CLASS_NAMED_VARIABLE, domain) if "$" not in n]

    # -- reads ------------------------------------------------------------------------------------
    def show(self, kind: str, number: str) -> dict:
        ln = schedule_ln(kind, number)
        boolean = kind == "OnOff"
        fields = {
            "SchdSt": ("ST", "SchdSt.stVal"), "SchdEnaErr": ("ST", "SchdEnaErr.stVal"),
            "SchdEntr": ("ST", "SchdEntr.stVal"), "ActStrTm": ("ST", "ActStrTm.stVal"),
            "ActStrTm.q": ("ST", "ActStrTm.q"), "NxtStrTm": ("ST", "NxtStrTm.stVal"), "NxtStrTm.q": ("ST", "NxtStrTm.q"),
            "NumEntr": ("SP", "NumEntr.setVal"), "SchdIntv": ("SP", "SchdIntv.setVal"),
            "SchdPrio": ("SP", "SchdPrio.setVal"),
            "Val": ("ST", "ValSPS.stVal") if boolean else ("MX", "ValMV.mag.f"),
            "Val.q": ("ST", "ValSPS.q") if boolean else ("MX", "ValMV.q"),
        }
        results = self.c.read_many([name(self.ld, ln, fc, p) for fc, p in fields.values()])
        out = {k: _plain(r) for k, r in zip(fields, results)}
        if out["SchdSt"] is None and out["NumEntr"] is None:
            raise ClientError(f"{self.ld}/{ln} does not exist on this server or cannot be read")
        count = out["NumEntr"] if isinstance(out["NumEntr"], int) and 0 < out["NumEntr"] <= 100 else 0
        prefix, path = ("ValSPG", "setVal") if boolean else ("ValASG", "setMag.f")
        values = self.c.read_many([name(self.ld, ln, "SP", f"{prefix}{i:03d}.{path}") for i in range(1, count + 1)])
        starts = self.c.read_many([name(self.ld, ln, "SP", f"StrTm{i:02d}.setTm") for i in range(1, 17)])
        out["values"] = [_plain(v) for v in values]
        out["starts"] = {f"StrTm{i:02d}": _plain(v) for i, v in enumerate(starts, start=1)
                         if not isinstance(v, mms.DataAccessError) and _plain(v) is not None}
        out["schedule"] = f"{self.ld}/{ln}"
        return out

    def controller(self, kind: str) -> dict:
        boolean = kind == "OnOff"
        reads = [name(self.ld, f"{kind}_FSCC1", "ST", "ActSchdRef.stVal"),
                 name(self.ld, f"{kind}_GGIO1", "ST", "SPCSO1.stVal") if boolean
                 else name(self.ld, f"{kind}_GGIO1", "MX", "AnOut1.mxVal.f")]
        active, value = (_plain(r) for r in self.c.read_many(reads))
        return {"kind": kind, "active": active, "output": value}

    def kinds(self) -> list[str]:
        lns = self._lns(self.ld)
        return [k for k in KINDS if f"{k}_FSCC1" in lns]

    # -- writes and operates -----------------------------------------------------------------------
    def write(self, kind: str, number: str, values: list | None = None, interval: int | None = None,
              start: datetime | None = None, priority: int | None = None) -> list[str]:
        ln, boolean = schedule_ln(kind, number), kind == "OnOff"
        names, data = [], []
        if values is not None:
            names.append(name(self.ld, ln, "SP", "NumEntr.setVal"))
            data.append(IntData(len(values)))
            prefix, path = ("ValSPG", "setVal") if boolean else ("ValASG", "setMag.f")
            for i, v in enumerate(values, start=1):
                names.append(name(self.ld, ln, "SP", f"{prefix}{i:03d}.{path}"))
                data.append(BoolData(bool(v)) if boolean else FloatData(float(v)))
        if interval is not None:
            names.append(name(self.ld, ln, "SP", "SchdIntv.setVal"))
            data.append(IntData(interval))
        if priority is not None:
            names.append(name(self.ld, ln, "SP", "SchdPrio.setVal"))
            data.append(IntData(priority))
        if start is not None:
            names.append(name(self.ld, ln, "SP", "StrTm01.setTm"))
            data.append(TimestampData(start))
        errors = self.c.write_many(names, data)
        return [f"{n}: {e}" for n, e in zip(names, errors) if e is not None]

    def operate(self, kind: str, number: str, enable: bool) -> str | None:
        """None on success, else the reason (LastApplError with AddCause, SchdEnaErr)."""
        ln = schedule_ln(kind, number)
        try:
            mms.operate(self.c, f"{self.ld}/{ln}.{'EnaReq' if enable else 'DsaReq'}", True)
            return None
        except mms.ControlError as exc:
            reason = str(exc)
            try:
                err = _plain(self.c.read(name(self.ld, ln, "ST", "SchdEnaErr.stVal")))
                reason += f"; SchdEnaErr {err} ({EnaErr(err).name})"
            except (mms.MmsError, ValueError):
                pass
            return reason


def _plain(result):
    if isinstance(result, mms.DataAccessError):
        return None
    value = getattr(result, "value", None)
    if isinstance(value, bytes):  # quality bit string: validity
        return "invalid" if (value[0] & 0xC0) == 0x40 else "good"
    return value


def format_schedule(s: dict) -> str:
    state = s["SchdSt"]
    lines = [f"{s['schedule']}",
             f"  state     {State(state).name if state in (1, 2, 3, 4) else state}"
             f"  (SchdEnaErr {EnaErr(s['SchdEnaErr']).name if s['SchdEnaErr'] in set(EnaErr) else s['SchdEnaErr']})",
             f"  entry     {s['SchdEntr']}   value {_fmt(s['Val'])} ({s['Val.q']})",
             f"  started   {_fmt(s['ActStrTm']) if s['ActStrTm.q'] == 'good' else '-'}"
             f"   next {_fmt(s['NxtStrTm']) if s['NxtStrTm.q'] == 'good' else '-'}",
             f"  NumEntr {s['NumEntr']}  SchdIntv {s['SchdIntv']} s  SchdPrio {s['SchdPrio']}",
             f"  values    {', '.join(_fmt(v) for v in s['values'])}"]
    for k, v in s["starts"].items():
        if isinstance(v, datetime) and v.timestamp() > 0:
            lines.append(f"  {k}   {_fmt(v)}")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:g}"
    return str(v)
