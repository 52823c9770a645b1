"""The container image (deploy/Containerfile): what it promises, and, where a container
engine works, the image built and run: healthy, its state in the volume, stopped by SIGTERM.

On a machine without a working engine (no daemon, no network for the base image) the run
test skips with the reason; the promises are checked on every machine."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "deploy" / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    stages: list[list[tuple[str, str]]] = []
    for ln in lines:
        word, _, rest = ln.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages[-1]


def test_the_image_runs_as_an_unprivileged_user_with_the_state_directory_a_volume():
    final = dict(instructions())
    assert final["USER"] not in ("root", "0"), "the site must not run as root in the container"
    env = final["ENV"]
    assert "RELEVENT_STATE_DIR=/var/lib/relevent" in env
    assert '"/var/lib/relevent"' in final["VOLUME"]
    assert "relevent" in final["HEALTHCHECK"] and '"status"' in final["HEALTHCHECK"]
    assert final["ENTRYPOINT"] == '["relevent", "run"]'


def test_what_the_image_copies_exists_and_its_demo_command_is_real():
    text = CONTAINERFILE.read_text()
    for copied in ("pyproject.toml", "README.md", "relevent"):
        assert (ROOT / copied).exists(), f"the Containerfile copies {copied}, which is not in the checkout"
    assert "relevent init --demo /etc/relevent/site.toml" in text
    out = subprocess.run([sys.executable, "-m", "relevent", "init", "--help"], capture_output=True, text=True,
                         timeout=30, cwd=ROOT)
    assert "--demo" in out.stdout


def _engine() -> tuple[str | None, str]:
    for name in ("podman", "docker"):
        exe = shutil.which(name)
        if exe is None:
            continue
        info = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=30)
        if info.returncode == 0:
            return exe, ""
        return None, f"{name} is installed but does not work here: {(info.stderr or info.stdout).strip()[:200]}"
    return None, "no container engine (podman or docker) on this machine"


def test_the_image_builds_runs_healthy_and_stops_on_sigterm():
    exe, why = _engine()
    if exe is None:
        pytest.skip(why)
    tag = f"relevent-test:{uuid.uuid4().hex[:8]}"
    build = subprocess.run([exe, "build", "-f", str(CONTAINERFILE), "-t", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=1200)
    if build.returncode != 0 and ("pull" in build.stderr.lower() or "resolve" in build.stderr.lower()):
        pytest.skip(f"cannot fetch the base image: {build.stderr.strip()[-300:]}")
    assert build.returncode == 0, build.stderr[-3000:]
    name, volume = f"relevent-test-{uuid.uuid4().hex[:8]}", f"relevent-test-state-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run([exe, "run", "-d", "--name", name, "-v", f"{volume}:/var/lib/relevent", tag],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = subprocess.run([exe, "exec", name, "relevent", "status", "/etc/relevent/site.toml"],
                                    capture_output=True, text=True, timeout=30)
            if status.returncode == 0 and "running" in status.stdout:
                break
            time.sleep(2)
        else:
            pytest.fail(f"the site in the container did not come up: {status.stdout}{status.stderr}")
        files = subprocess.run([exe, "exec", name, "ls", "/var/lib/relevent"], capture_output=True, text=True)
        assert files.stdout.split(), "nothing written in the state volume"
        t0 = time.monotonic()
        subprocess.run([exe, "stop", "-t", "30", name], check=True, capture_output=True, timeout=60)
        assert time.monotonic() - t0 < 30, "SIGTERM did not stop the site before the engine's kill"
        code = subprocess.run([exe, "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True,
                              text=True).stdout.strip()
        assert code == "0", f"the runner exited {code} on SIGTERM"
    finally:
        subprocess.run([exe, "rm", "-f", name], capture_output=True)
        subprocess.run([exe, "volume", "rm", "-f", volume], capture_output=True)
        subprocess.run([exe, "rmi", "-f", tag], capture_output=True)
