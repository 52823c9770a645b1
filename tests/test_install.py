"""Installable without the checkout: the package carries the demo and a site template
(`relevent init`), the checkout's topologies/demo.toml is that one file, the template is
explained by `relevent check` until filled in, the version is shown, the systemd unit passes
`systemd-analyze verify`, and a wheel installed into a fresh venv outside the checkout runs the
demo from an empty folder with a schedule written over MMS reaching the simulated inverter."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relevent import __version__
from sitectl import REPO, free_port

PACKAGED_DEMO = REPO / "relevent" / "sites" / "demo.toml"
UNIT = REPO / "deploy" / "relevent@.service"


def relevent(*args: str, cwd: Path, exe: list[str] | None = None, env: dict | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*(exe or [sys.executable, "-m", "relevent"]), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


# -- one source for the demo ------------------------------------------------------------------------
def test_the_checkouts_demo_is_a_link_to_the_one_file_in_the_package():
    link = REPO / "topologies" / "demo.toml"
    assert link.is_symlink() and link.resolve() == PACKAGED_DEMO.resolve()
    assert not PACKAGED_DEMO.is_symlink() and PACKAGED_DEMO.is_file()
    assert not (REPO / "relevent" / "sites" / "template.toml").is_symlink()


def test_init_demo_writes_the_packaged_demo_and_never_overwrites_without_force(tmp_path):
    res = relevent("init", "site.toml", "--demo", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "site.toml").read_text() == PACKAGED_DEMO.read_text()
    (tmp_path / "site.toml").write_text("# mine\n")
    res = relevent("init", "site.toml", "--demo", cwd=tmp_path)
    assert res.returncode == 1 and "exists; --force" in res.stderr
    assert (tmp_path / "site.toml").read_text() == "# mine\n"
    assert relevent("init", "site.toml", "--demo", "--force", cwd=tmp_path).returncode == 0
    assert (tmp_path / "site.toml").read_text() == PACKAGED_DEMO.read_text()


def test_the_template_is_explained_by_check_naming_each_field_until_filled_in(tmp_path):
    assert relevent("init", "site.toml", cwd=tmp_path).returncode == 0
    res = relevent("check", "site.toml", cwd=tmp_path)
    assert res.returncode == 1
    named = re.findall(r"^site\.toml:\d+: (\S+): not filled in yet: ", res.stderr, re.M)
    assert named == ["site.name", "site.state_dir", "wan[0].address", "der[0].rated_power_w", "lan[0].host"]
    assert len(res.stderr.strip().splitlines()) == len(named)  # one clear error each, no follow-on noise
    text = (tmp_path / "site.toml").read_text()
    for key, value in (("name", '"farm-1"'), ("state_dir", '"./state"'), ("address", '"0.0.0.0"'),
                       ("rated_power_w", "10000"), ("host", '"192.168.1.20"')):
        text = re.sub(rf'^{key} = "<fill in:[^"]*"', f"{key} = {value}", text, count=1, flags=re.M)
    (tmp_path / "site.toml").write_text(text)
    res = relevent("check", "site.toml", cwd=tmp_path)   # plain MMS beyond loopback: refused, naming why
    assert res.returncode == 1 and "wan[0].tls: endpoint 'dso' serves mms in plain text on 0.0.0.0:102" in res.stderr
    (tmp_path / "site.toml").write_text(text.replace('address = "0.0.0.0"', 'address = "0.0.0.0"\ninsecure = true', 1))
    res = relevent("check", "site.toml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # One DER, one LAN endpoint, no simulators, the protocols' default ports.
    assert "WAN  dso              mms      0.0.0.0 port 102" in res.stdout
    assert "LAN  inverter         modbus   192.168.1.20 port 502" in res.stdout
    assert "SIM" not in res.stdout and res.stdout.count("DER  ") == 1


def test_version_is_printed_by_the_version_flag(tmp_path):
    res = relevent("--version", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == f"relevent {__version__}"


# -- the systemd unit -----------------------------------------------------------------------------
def analyze(unit: Path) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze missing: `make test` installs it (Makefile target systemd)")
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_the_systemd_unit_verifies_with_relevent_where_execstart_says(tmp_path):
    """verify also checks that ExecStart's program exists, on systemd's own search path
    (/usr/local/bin, /usr/bin, ...; not $PATH), where a test machine has no relevent: an instance
    of the unit with only that name pointed at this venv's relevent must verify with no message
    at all, and the unit as shipped may fail on that name alone."""
    text = UNIT.read_text()
    assert text.count("ExecStart=relevent ") == 1
    venv_relevent = Path(sys.executable).parent / "relevent"
    assert venv_relevent.exists()
    instance = tmp_path / "relevent@demo.service"
    instance.write_text(text.replace("ExecStart=relevent ", f"ExecStart={venv_relevent} "))
    res = analyze(instance)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stderr
    shipped = tmp_path / "shipped" / "relevent@demo.service"
    shipped.parent.mkdir()
    shipped.write_text(text)
    res = analyze(shipped)
    if shutil.which("relevent", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"):
        assert res.returncode == 0 and res.stderr == ""
    else:
        assert [line for line in res.stderr.splitlines() if line] == [
            "relevent@demo.service: Command relevent is not executable: No such file or directory"]


def test_the_systemd_unit_has_the_settings_the_runner_relies_on():
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert settings["Type"] == "notify" and settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["ExecStart"] == "relevent run /etc/relevent/%i.toml"
    assert settings["StateDirectory"] == "relevent/%i" and settings["Environment"] == "RELEVENT_STATE_DIR=%S/relevent/%i"
    assert settings["CapabilityBoundingSet"] == settings["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert settings["ProtectSystem"] == "strict" and settings["NoNewPrivileges"] == "yes"
    assert settings["DynamicUser"] == "yes" and settings["Restart"] == "on-failure"
    # SIGTERM to the runner alone: it stops the actors in reverse start order itself.
    assert settings["KillMode"] == "mixed"
    assert {"WatchdogSec", "TimeoutStopSec", "MemoryMax"} <= set(settings)


# -- a wheel in a fresh venv, outside the checkout -------------------------------------------------
def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (subprocess.SubprocessError, ValueError, KeyError, StopIteration):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last})")


def test_the_wheel_installed_in_a_fresh_venv_runs_the_demo_from_an_empty_folder(tmp_path):
    wheels, venv, folder = tmp_path / "wheels", tmp_path / "venv", tmp_path / "empty"
    folder.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(wheels.glob("relevent-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "RELEVENT_"))}
    install = subprocess.run([py, "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True,
                             env=clean, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    where = subprocess.run([py, "-c", "import relevent; print(relevent.__file__)"], capture_output=True,
                           text=True, cwd=folder, env=clean, timeout=60).stdout
    assert where.startswith(str(venv)), where  # the installed package, not the checkout
    exe = [str(venv / "bin" / "relevent")]

    assert relevent("--version", cwd=folder, exe=exe, env=clean).stdout.strip() == f"relevent {__version__}"
    res = relevent("init", "site.toml", "--demo", cwd=folder, exe=exe, env=clean)
    assert res.returncode == 0, res.stderr
    assert relevent("check", "site.toml", cwd=folder, exe=exe, env=clean).returncode == 0
    res = relevent("init", "template.toml", cwd=folder, exe=exe, env=clean)
    assert res.returncode == 0 and "not filled in yet" in relevent("check", "template.toml", cwd=folder, exe=exe,
                                                                   env=clean).stderr

    ports = {name: free_port() for name in ("RELEVENT_ADMIN_PORT", "RELEVENT_MMS_PORT", "RELEVENT_MQTT_PORT",
                                            "RELEVENT_MODBUS_PORT", "RELEVENT_HTTP_PORT",
                                            "RELEVENT_OPENADR_PORT", "RELEVENT_IEC104_PORT",
                                            "RELEVENT_OCPP_PORT", "RELEVENT_HEATPUMP_PORT",
                                            "RELEVENT_METRICS_PORT")}
    env = {**clean, **{k: str(v) for k, v in ports.items()}}
    log = open(tmp_path / "run.out", "wb")
    proc = subprocess.Popen([*exe, "run", "site.toml"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    pgid = None
    try:
        def status() -> dict:
            res = relevent("status", "site.toml", "--json", cwd=folder, exe=exe, env=env, timeout=30)
            return json.loads(res.stdout)

        def running():
            assert proc.poll() is None, (tmp_path / "run.out").read_text()[-3000:]
            reply = status()
            nodes = list(walk(reply["tree"]))
            return reply if all(n["state"] == "running" for n in nodes) and len(nodes) > 5 else None

        reply = wait(running, 90, "the demo running")
        pgid = json.loads((folder / "state" / "relevent.pid").read_text())["admin_pgid"]
        assert reply["version"] == __version__
        table = relevent("status", "site.toml", cwd=folder, exe=exe, env=env, timeout=30).stdout
        assert table.startswith(f"site demo: relevent {__version__}, runner pid {proc.pid}")

        mms = f"127.0.0.1:{ports['RELEVENT_MMS_PORT']}"
        res = relevent("schedule", "write", mms, "MaxPow", "1", "--ld", "DER_Scheduler_pv1Control",
                       "--values", "2500", "--interval", "60", "--start", "+2", "--priority", "30", "--enable",
                       cwd=folder, exe=exe, env=env)
        assert res.returncode == 0, res.stderr

        def obeyed():
            inverter = next(n for n in walk(status()["tree"]) if n["name"] == "pv1-inverter")["detail"]
            return inverter if inverter["output_w"] == 2500.0 and inverter["wmaxlimpct"] == 25.0 else None

        wait(obeyed, 30, "the simulated inverter limited to 2500 W")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        if pgid:
            from relevent.runtime.runner import group_processes
            if group_processes(pgid):
                os.killpg(pgid, signal.SIGKILL)
    assert proc.returncode == 0


def walk(node: dict):
    yield node
    for child in node.get("children") or []:
        yield from walk(child)
