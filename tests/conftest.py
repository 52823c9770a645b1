from __future__ import annotations

import pytest

from sitectl import Site, free_port, small_topology


@pytest.fixture
def make_site(tmp_path):
    """Start real sites (`relevent run` processes); all are stopped, and checked to
    leave no process behind, at the end of the test."""
    sites: list[Site] = []

    def start(name: str = "site", **kwargs) -> Site:
        state = tmp_path / f"{name}-state"
        path = tmp_path / f"{name}.toml"
        path.write_text(small_topology(state, free_port(), **kwargs))
        site = Site(path, state)
        sites.append(site)
        return site.start()

    yield start
    for site in sites:
        try:
            site.stop()
            assert site.leftovers() == [], f"processes left behind: {site.leftovers()}"
        finally:
            site.kill_everything()
