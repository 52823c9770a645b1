"""MMS writes of every type to every attribute of every FC, against a running site: the
site never crashes (no actor restarts), and a schedule enabled before keeps running with
its settings and output."""
from __future__ import annotations

import random
import time
from datetime import datetime, timezone

import open61850.mms as mms
from open61850.data import (
    ArrayData, BitStringData, BoolData, FloatData, IntData, MmsStringData, OctetStringData, StructureData,
    TimestampData, UIntData, VisibleStringData,
)

from relevent.protocols.mms.client import ScheduleClient, Target
from relevent.topology import load_topology
from sitectl import walk

LD = "DER_Scheduler_Control"
PROTECTED = "ActPow_FSCH01"


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["bool", "int", "uint", "float", "double", "bits", "octets", "vstring", "mstring", "time"]
    if depth < 2:
        kinds += ["struct", "array"]
    kind = rng.choice(kinds)
    if kind == "bool":
        return BoolData(rng.random() < 0.5)
    if kind == "int":
        return IntData(rng.choice([0, -1, 1, 2 ** 31 - 1, -2 ** 31, rng.randrange(-10 ** 6, 10 ** 6)]))
    if kind == "uint":
        return UIntData(rng.choice([0, 1, 2 ** 32 - 1, rng.randrange(10 ** 6)]))
    if kind in ("float", "double"):
        return FloatData(rng.choice([0.0, -1.0, 1e38, float("nan"), float("inf"), rng.uniform(-1e6, 1e6)]),
                         double=kind == "double")
    if kind == "bits":
        return BitStringData(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4))), rng.randrange(8))
    if kind == "octets":
        return OctetStringData(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 70))))
    if kind in ("vstring", "mstring"):
        text = "".join(rng.choice("aZ9_/$ .") for _ in range(rng.randrange(0, 300)))
        return VisibleStringData(text) if kind == "vstring" else MmsStringData(text)
    if kind == "time":
        return TimestampData(datetime.fromtimestamp(rng.uniform(0, 4e9), tz=timezone.utc), rng.randrange(256))
    members = [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    return StructureData(members) if kind == "struct" else ArrayData(members)


def test_every_type_written_everywhere_never_crashes_the_site(make_site):
    site = make_site(schedules=2, functions=("ActPow", "OnOff"))
    port = next(ep["port"] for ep in load_topology(site.topology).data["wan"])
    sc = ScheduleClient(Target("127.0.0.1", port, LD))
    start = datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() + 1.5, tz=timezone.utc)
    assert sc.write("ActPow", "1", [1234.0], 3600, start, 40) == []
    assert sc.operate("ActPow", "1", True) is None
    deadline = time.monotonic() + 15   # running before the sweep (it starts in 1.5 s)
    while (before := sc.show("ActPow", "1"))["SchdSt"] != 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert before["SchdSt"] == 4
    pids = site.pids()

    c = mms.MmsClient.connect("127.0.0.1", port, timeout=10)
    names = [n for n in c.get_name_list(mms.OBJECT_CLASS_NAMED_VARIABLE, LD) if not n.startswith(PROTECTED)]
    assert len(names) > 500  # every FC of every LN: a real sweep
    rng = random.Random(11)
    outcomes = {"accepted": 0, "refused": 0, "rejected requests": 0}
    targets = names * 2
    rng.shuffle(targets)
    for i in range(0, len(targets), 8):
        batch = targets[i:i + 8]
        try:
            results = c.write_many([f"{LD}/{n}" for n in batch], [random_value(rng) for _ in batch])
        except (mms.MmsReject, mms.ServiceError):
            outcomes["rejected requests"] += 1  # e.g. a request larger than the negotiated PDU size
            continue
        for r in results:
            outcomes["refused" if r is not None else "accepted"] += 1
    c.close()

    # Some writes are taken (a value of the right type), most refused attribute by attribute,
    # some whole requests rejected by the MMS layer (malformed for the server, too large).
    assert outcomes["accepted"] > 0 and outcomes["refused"] > 0, outcomes
    assert site.pids() == pids, "an actor restarted under fuzzed writes"
    assert all(n["restarts"] == 0 for n in walk(site.tree()))
    after = sc.show("ActPow", "1")
    for key in ("SchdSt", "NumEntr", "SchdIntv", "SchdPrio", "values", "starts"):
        assert after[key] == before[key], key
    assert sc.controller("ActPow")["output"] == 1234.0 and site.node("der1/ActPow")["detail"]["output"] == 1234.0
    sc.close()
