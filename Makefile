# Fresh machine: `make demo` runs the embedded default site, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast bench mosquitto clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/relevent run topologies/demo.toml

# Mosquitto is the real MQTT broker the LAN tests talk to (Debian package).
mosquitto:
	@test -x /usr/sbin/mosquitto || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto >/dev/null; }
	@test -x /usr/sbin/mosquitto && echo "mosquitto: $$(/usr/sbin/mosquitto -h | head -1)"

test: $(STAMP) mosquitto
	$(PY) -m pytest -q

# Without the 100 start/stop cycles.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/runtime_bench.py --kills 100 --cycles 20

clean:
	rm -rf $(VENV) state *.egg-info
