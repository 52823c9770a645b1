"""Start and stop a site 100 times: every stop is clean and leaves no process behind."""
from __future__ import annotations

from pathlib import Path

import pytest

from sitectl import Site, free_port, small_topology


def processes_of(topology: Path) -> list[int]:
    """Every live process whose command line names this topology (runner and actors:
    the actors are forked from the runner and keep its command line)."""
    needle = str(topology).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if stat[0] != "Z":
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_100_start_stop_cycles_leave_no_process_behind(tmp_path):
    state = tmp_path / "state"
    path = tmp_path / "cycles.toml"
    path.write_text(small_topology(state, free_port(), schedules=1, functions=("OnOff",)))
    site = Site(path, state)
    try:
        for cycle in range(100):
            site.start()
            pgid = site.admin_pgid
            assert len(site.leftovers()) >= 6, "site should be up: admin, logger, site, 2 endpoints, DER, ..."
            assert site.stop() == 0, f"cycle {cycle}: runner exited with an error"
            assert site.leftovers() == [], f"cycle {cycle}: processes left in group {pgid}"
            assert processes_of(path) == [], f"cycle {cycle}: processes left: {processes_of(path)}"
            assert not (state / "relevent.sock").exists()
    finally:
        site.kill_everything()
