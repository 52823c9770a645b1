"""Moving a DER to another host (docs/deploy.md, "Moving a DER to another host"): its state is
the store files named after it; copied into another site's state directory, the DER resumes
its schedule there, and nothing of the other DERs comes with it.  One host stands for both:
two sites with their own state directories, the second started after the first stopped."""
from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

from sitectl import Site, free_port


def topology(state: Path, http: int) -> str:
    return f"""[site]
name = "move"
state_dir = "{state}"
[runtime]
admin_port = {free_port()}
[[wan]]
name = "http"
protocol = "http"
address = "127.0.0.1"
port = {http}
party = "aggregator"
[[der]]
name = "der1"
functions = ["ActPow", "OnOff"]
schedules = 2
rated_power_w = 10000
[[der]]
name = "der2"
functions = ["ActPow"]
schedules = 2
"""


def http(port: int, method: str, url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{url}", method=method,
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=15) as r:
        return json.loads(r.read() or b"{}")


def der_files(store: Path, der: str) -> list[Path]:
    """The files the docs name for a DER: actor__NAME, actor__NAME__F, controller__NAME__F."""
    return sorted({*store.glob(f"actor__{der}.msgpack"), *store.glob(f"actor__{der}__*.msgpack"),
                   *store.glob(f"controller__{der}__*.msgpack")})


def test_a_der_moved_with_its_store_files_resumes_its_schedule_on_the_new_host(tmp_path):
    old_state, new_state = tmp_path / "old", tmp_path / "new"
    old_port, new_port = free_port(), free_port()
    (tmp_path / "old.toml").write_text(topology(old_state, old_port))
    (tmp_path / "new.toml").write_text(topology(new_state, new_port))
    # A start in the past is refused (422): ahead enough for a loaded machine to write it first.
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 6))
    old = Site(tmp_path / "old.toml", old_state)
    old.start()
    try:
        old.wait_running(60)
        for der, value in (("der1", 1234.0), ("der2", 777.0)):
            http(old_port, "PUT", f"/api/v1/ders/{der}/ActPow/schedules/1",
                 {"values": [value], "interval_s": 3600, "priority": 20, "start": start})
            http(old_port, "POST", f"/api/v1/ders/{der}/ActPow/schedules/1/enable")
        old.wait_for("der1/ActPow", lambda n: n["detail"].get("output") == 1234.0, timeout=30)
        assert old.stop(60) == 0
    finally:
        old.kill_everything()

    files = der_files(old_state / "store", "der1")
    names = {f.name for f in files}
    assert {"actor__der1.msgpack", "controller__der1__ActPow.msgpack", "controller__der1__OnOff.msgpack"} <= names
    assert not any("der2" in n for n in names)
    (new_state / "store").mkdir(parents=True)
    for f in files:
        shutil.copy2(f, new_state / "store" / f.name)

    new = Site(tmp_path / "new.toml", new_state)
    new.start()
    try:
        new.wait_running(60)
        node = new.wait_for("der1/ActPow", lambda n: n["detail"].get("output") == 1234.0, timeout=15)
        assert node["detail"]["source"] == "FSCH01" and node["restarts"] == 0
        moved = http(new_port, "GET", "/api/v1/ders/der1/ActPow/schedules/1")
        assert moved["state"] == "RUNNING" and moved["values"] == [1234.0], moved
        assert http(new_port, "GET", "/api/v1/ders/der2/ActPow/schedules/1")["state"] != "RUNNING"
        assert new.node("der2/ActPow")["detail"].get("output") != 777.0
    finally:
        new.kill_everything()
