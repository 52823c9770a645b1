# Fresh machine: `make demo` runs the embedded default site, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast bench chaos mosquitto systemd chromium node-charger openssl promtool compiler clean

$(STAMP): pyproject.toml relevent/iec61850/switcher.c | compiler
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/relevent run topologies/demo.toml

# The MMS switcher thread is one C file built at install (relevent/iec61850/switcher.c).
compiler:
	@command -v cc >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq gcc libc6-dev >/dev/null; }

# promtool (Debian's prometheus package) checks the metrics exposition (tests/test_metrics.py).
promtool:
	@command -v promtool >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq prometheus >/dev/null; }

# openssl is the independent checker of the site PKI and TLS tests (verify -crl_check, s_client).
openssl:
	@command -v openssl >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq openssl >/dev/null; }

# Mosquitto is the real MQTT broker the LAN and EMS tests talk to; mosquitto_pub/_sub are
# the EMS tests' peer (Debian packages).
mosquitto:
	@{ test -x /usr/sbin/mosquitto && command -v mosquitto_pub >/dev/null; } || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; }
	@test -x /usr/sbin/mosquitto && echo "mosquitto: $$(/usr/sbin/mosquitto -h | head -1)"

# systemd-analyze checks the service unit (deploy/relevent@.service); no running systemd needed.
systemd:
	@command -v systemd-analyze >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq systemd >/dev/null; }

# Headless Chromium for the web view's browser test (tests/test_web_view.py), Debian's package:
# browser downloads by other tools are not used.
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@echo "chromium: $$(chromium --version 2>/dev/null)"

# The OCPP tests' second charge point, from another implementation: ocpp-rpc on Node
# (tests/node, pinned by its package-lock.json).
node-charger:
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm >/dev/null; }
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error

# --durations: the slowest tests named at the end, to keep the whole run under 20 minutes.
test: $(STAMP) mosquitto systemd chromium node-charger openssl promtool
	$(PY) -m pytest -q --durations=25

# Without the 100 start/stop cycles.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Long: about 10 minutes.  Figures and their commands: bench/README.md.
bench: $(STAMP) mosquitto
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk >/dev/null; }
	$(PY) bench/runtime_bench.py --kills 100 --cycles 20 --json bench/results-runtime.json
	$(PY) bench/switch_bench.py --ders 1 --entries 60 --json bench/results-switch-1der-c.json
	$(PY) bench/switch_bench.py --ders 100 --entries 20 --pause 0.005 --isolation der --json bench/results-switch-100der-der.json
	-$(PY) bench/switch_bench.py --ders 100 --entries 20 --pause 0.005 --serve-nice 0 --json bench/results-switch-100der-process.json  # may fail: see bench/README.md
	$(PY) bench/mms_startup_bench.py --ders 1 --ders 10 --ders 100 --json bench/results-mms-startup.json
	$(PY) bench/http_bench.py --enables 50 --clients 50 --seconds 10 --json bench/results-http.json
	$(PY) bench/gc_bench.py --ders 100 --functions ActPow --schedules 1
	$(PY) bench/memory_bench.py --ders 10 --isolation process
	$(PY) bench/memory_bench.py --ders 10 --isolation der
	$(PY) bench/lan_bench.py --entries 60 --json bench/results-lan.json
	$(PY) bench/observe_bench.py lateness --observe off --json bench/results-observe-off.json
	$(PY) bench/observe_bench.py lateness --observe on --json bench/results-observe-on.json
	$(PY) bench/observe_bench.py size --json bench/results-observe-size.json

# Long fault-injection run, outages and power loss: about two hours; figures in
# bench/chaos/RESULTS.md.
chaos: $(STAMP) mosquitto
	RELEVENT_STATE_DIR=$$(mktemp -d) $(VENV)/bin/relevent chaos topologies/chaos.toml --count 100 \
	    --json bench/chaos/results-chaos.json --markdown bench/chaos/results-chaos.md
	$(PY) bench/outage_bench.py --outage 60 --json bench/chaos/results-outages.json
	$(PY) bench/power_loss_bench.py --store-cycles 1000 --site-cycles 1000 --json bench/chaos/results-power-loss.json

clean:
	rm -rf $(VENV) state *.egg-info relevent/iec61850/_switcher*.so
