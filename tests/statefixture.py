"""The committed state fixtures (tests/fixtures/state-v<N>/) for tests: take one over in a
copy, and check that a site running on it shows every schedule as it should.

What each schedule should show now is computed from what the client wrote (the fixture's
SPEC) and when its runs started (the fixture's expected.json), with the pure scheduling
core: so the check means the same in 2030 as in 2060, and never reads the expectation out
of the store it checks.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from mmsclients import Open61850Client
from relevent.actors.controller import ControllerActor, DEFAULT_RESERVE
from relevent.scheduling.arbitration import output_of
from relevent.scheduling.local import LocalSchedule, arm
from relevent.scheduling.schedule import Schedule, State, StartTime, status_snapshot
from sitectl import Site, free_port, now_ms

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import make_state_fixture as fx  # noqa: E402

FIXTURES = [p for p in sorted(Path(fx.HERE).glob("state-v*")) if p.is_dir()]


def take_over(tmp_path: Path, fixture: Path) -> tuple[Site, int]:
    """A copy of the fixture's state directory, run by the current build."""
    state = tmp_path / "state"
    shutil.copytree(fixture, state)
    mms = free_port()
    path = tmp_path / "site.toml"
    path.write_text(fx.site_text((fx.HERE / f"{fixture.name}.toml").read_text(), state, free_port(), mms))
    return Site(path, state), mms


# -- what each schedule must show at `now` ------------------------------------------------------------
def model(key: tuple, facts: dict, boot: int, now: int) -> Schedule:
    der, kind, name = key
    boolean = kind == "OnOff"
    reserve = name.startswith("Res_")
    sched = Schedule(name, boolean=boolean, periodic=reserve, reserve=reserve)
    s = sched.settings
    if key in fx.LOCAL:
        local = fx.LOCAL[key]
        started = boot if local["trigger"] == "power_up" else facts["act_start"]["/".join(key)]
        arm(sched, LocalSchedule(local["trigger"], name, local["value"], local["intv"], local["prio"]), started)
    else:
        spec = fx.SPEC[key]
        if reserve:
            ControllerActor._reserve_defaults(sched, DEFAULT_RESERVE[kind])
        s.num_entr, s.schd_intv = len(spec["values"]), spec["intv"]
        s.values[:len(spec["values"])] = spec["values"]
        s.prio = spec.get("prio", s.prio)
        s.reuse = spec.get("reuse", s.reuse)
        started = facts["act_start"].get("/".join(key))
        for slot, start in enumerate(spec.get("starts", [])):
            s.starts[slot] = StartTime(started if start == "now" else start)
        if spec.get("enable"):
            assert sched.enable(min(st.tm for st in s.starts if st.tm) - 1000).ok  # as the client did
        if reserve:
            assert sched.enable(now, by_site=True).ok  # the site keeps it running, always
    sched.advance(now)
    return sched


def read(c: Open61850Client, key: tuple, sched: Schedule) -> dict:
    """What a client reads of the schedule, in the model's terms."""
    r, boolean = fx.ref(*key), key[1] == "OnOff"
    state = c.read_int(f"{r}.SchdSt.stVal")
    n = c.read_int(f"{r}.NumEntr.setVal", "SP")
    out = {
        "state": state, "entry": c.read_int(f"{r}.SchdEntr.stVal"), "num_entr": n,
        "intv": c.read_int(f"{r}.SchdIntv.setVal", "SP"), "prio": c.read_int(f"{r}.SchdPrio.setVal", "SP"),
        "reuse": c.read_bool(f"{r}.SchdReuse.setVal", "SP"),
        "values": [c.read_bool(f"{r}.ValSPG{i:03d}.setVal", "SP") if boolean
                   else c.read_float(f"{r}.ValASG{i:03d}.setMag.f", "SP") for i in range(1, n + 1)],
    }
    if state == State.RUNNING:
        out["act_start"] = c.read_time_ms(f"{r}.ActStrTm.stVal")
        out["value"] = c.read_bool(f"{r}.ValSPS.stVal") if boolean else c.read_float(f"{r}.ValMV.mag.f")
    if sched.status.next_start is not None:
        out["next_start"] = c.read_time_ms(f"{r}.NxtStrTm.stVal")
    if not sched.reserve:  # the reserve's start is the site's, not the client's
        out["starts"] = [c.read_time_ms(f"{r}.StrTm{slot + 1:02d}.setTm", "SP")
                         for slot, st in enumerate(sched.settings.starts) if st.tm is not None]
    return out


def shown(sched: Schedule) -> dict:
    st, s = status_snapshot(sched), sched.settings
    out = {"state": st["state"], "entry": st["entry"], "num_entr": s.num_entr, "intv": s.schd_intv,
           "prio": s.prio, "reuse": s.reuse, "values": s.values[:s.num_entr]}
    if st["state"] == State.RUNNING:
        out["act_start"], out["value"] = st["act_start"], st["value"]
    if st["next_start"] is not None:
        out["next_start"] = st["next_start"]
    if not sched.reserve:
        out["starts"] = [x.tm for x in s.starts if x.tm is not None]
    return out


def check_every_schedule(site: Site, mms: int, facts: dict, started: int) -> None:
    """Every schedule of the fixture's site, read over MMS, and every controller's output,
    are what the scheduling core makes of what was written and when runs started."""
    c = Open61850Client("127.0.0.1", mms)
    try:
        # The power-up schedule ran again from this start: take its start from the site.
        boot = c.read_time_ms(f"{fx.ref('bat1', 'MaxPow', 'FSCH02')}.ActStrTm.stVal")
        assert boot >= started > facts["act_start"]["bat1/MaxPow/FSCH02"]
        for key in [*fx.SPEC, *fx.LOCAL]:
            for _attempt in range(3):  # a boundary between the reads and the model: read again
                t0 = now_ms()
                expected = shown(model(key, facts, boot, t0))
                got = read(c, key, model(key, facts, boot, t0))
                if shown(model(key, facts, boot, now_ms())) == expected:
                    break
            assert got == expected, key
    finally:
        c.close()
    for der, kind in {(d, k) for d, k, _ in [*fx.SPEC, *fx.LOCAL]}:
        scheds = [model(key, facts, boot, now_ms()) for key in [*fx.SPEC, *fx.LOCAL] if key[:2] == (der, kind)]
        out = output_of(scheds)
        detail = site.node(f"{der}/{kind}")["detail"]
        assert (detail["output"], detail["source"]) == (out.value, out.source), (der, kind)


def facts_of(fixture: Path) -> dict:
    return json.loads((fx.HERE / f"{fixture.name}.expected.json").read_text())


def snapshot(root: Path) -> dict:
    """Every file under root with its bytes (directories as None)."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}
