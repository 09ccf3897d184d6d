# solo_d2: every target sets itself up first (idempotent; seconds when ready).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Main job knobs: `make demo HEAD=... OUTPUT=...`
CONFIG ?= configs/SOLO_shapes_quick.yaml
OUTPUT ?= output/demo
PYTEST_ARGS ?=

.PHONY: setup test demo bench clean

setup:
	@$(PYTHON) tools/setup_env.py --venv $(VENV)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) tools/demo.py --config-file $(CONFIG) --output $(OUTPUT)

clean:
	rm -rf output .pytest_cache
