# make test: set up .venv if needed, then lint, type-check and run the whole suite.
# make demo: set up .venv if needed, then run the dev Core + simulated home demo (DEMO_SECONDS=N).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test lint typecheck demo bench clean mosquitto chromium

setup: $(STAMP)

# Debian's python3 lacks ensurepip until python3-venv is installed; install it then.
$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed; installing Debian's python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# The PiPhi testkit's conformance assertions; its own pins cannot be met here (certifi).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
	  piphi-runtime-testkit-python==0.2.0
	@touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict runtime actors

# The MQTT actor's tests start their own broker; Debian puts it in /usr/sbin.
MOSQUITTO := $(firstword $(wildcard /usr/sbin/mosquitto /usr/local/sbin/mosquitto) $(shell command -v mosquitto 2>/dev/null))

mosquitto:
	@test -n "$(MOSQUITTO)" || { echo "mosquitto missing; installing Debian's mosquitto"; \
	  apt-get update -qq && apt-get install -y -qq mosquitto; }

# The status page's browser test drives Debian's chromium with playwright (never
# `playwright install`: it downloads a browser build of its own).
chromium:
	@test -x /usr/bin/chromium || { echo "chromium missing; installing Debian's chromium"; \
	  apt-get update -qq && apt-get install -y -qq chromium; }

# Four workers on two cores: most of the time of the real-process tests is waiting.
test: lint typecheck mosquitto chromium
	$(BIN)/pytest -n 4 --dist worksteal

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python bench/actors.py --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
