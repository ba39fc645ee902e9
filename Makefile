# The two commands a newcomer runs: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean bench browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[ml,dev,ray]'
	# Azurite, the Azure Blob emulator the tests and the demo start, comes from npm where Node is present
	if command -v npm >/dev/null; then npm install --silent --no-audit --no-fund --prefix $(VENV)/azurite azurite@3.37.0 \
	  || echo 'Azurite could not be installed: the Azure Blob tests will be skipped'; fi
	touch $(STAMP)

install: $(STAMP)

# make demo KEEP=1 keeps the demo's server (and its dashboard) up until Ctrl-C; FULL=1 adds the heavier steps
demo: $(STAMP)
	HF_HUB_OFFLINE=1 FERMION_DEMO_KEEP=$(KEEP) FERMION_DEMO_FULL=$(FULL) $(BIN)/python examples/demo.py

# the dashboard's tests drive a real browser: Debian's Chromium, installed when missing
browser:
	command -v chromium >/dev/null 2>&1 || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP) browser
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[ml,dev,ray,bench]'
	for b in benchmarks/*.py; do HF_HUB_OFFLINE=1 $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
