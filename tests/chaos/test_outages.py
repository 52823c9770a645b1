"""An MMS client that vanishes in the middle of a write sequence (its process dies without
releasing the association): the site keeps every write it accepted, enables nothing on its
own, restarts nothing, and the next client finishes the job.  Broker and device outages are
in tests/test_lan_devices.py and bench/outage_bench.py."""
from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone

from relevent.protocols.mms.client import ScheduleClient, Target
from relevent.topology import load_topology
from sitectl import REPO, walk

LD = "DER_Scheduler_Control"

HALF_A_SEQUENCE = """
import os, open61850.mms as mms
from open61850.data import IntData, FloatData
c = mms.MmsClient.connect("127.0.0.1", {port}, timeout=5)
ln = "{ld}/ActPow_FSCH02$SP$"
c.write_many([ln + "NumEntr$setVal", ln + "ValASG001$setMag$f", ln + "ValASG002$setMag$f"],
             [IntData(3), FloatData(1111.0), FloatData(2222.0)])
os._exit(0)   # gone: no conclude, no release, the third value and the enable never come
"""


def test_a_client_gone_mid_sequence_leaves_accepted_writes_and_nothing_else(make_site):
    site = make_site(schedules=2, functions=("ActPow",))
    port = next(ep["port"] for ep in load_topology(site.topology).data["wan"])
    pids = site.pids()
    for _ in range(3):
        subprocess.run([sys.executable, "-c", HALF_A_SEQUENCE.format(port=port, ld=LD)], check=True, cwd=REPO,
                       timeout=30)

    sc = ScheduleClient(Target("127.0.0.1", port, LD))
    half = sc.show("ActPow", "2")
    assert half["SchdSt"] == 1 and half["NumEntr"] == 3 and half["values"][:2] == [1111.0, 2222.0]
    # The next client completes the sequence and enables.
    assert sc.write("ActPow", "2", [1111.0, 2222.0, 3333.0], 60,
                    datetime.fromtimestamp(time.time() + 60, tz=timezone.utc), 25) == []
    assert sc.operate("ActPow", "2", True) is None
    assert sc.show("ActPow", "2")["SchdSt"] == 3
    sc.close()
    # Nothing restarted: checked last, so that the next client's whole job (a marker, not a
    # sleep) lies between the vanished clients and the check.
    assert site.pids() == pids and all(n["restarts"] == 0 for n in walk(site.tree()))
