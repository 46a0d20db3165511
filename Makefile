# make install: set up .venv and Mosquitto; make demo: the end-to-end demo; make test: lint, format check, tests
# (then the edge tests under Python 3.10: make test-py310).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedge-installed

.PHONY: install demo test test-py310 lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh $(VENV)

demo: $(STAMP)
	$(BIN)/fedge demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-py310

# The edge tests once more under Python 3.10 (JetPack 6) in .venv310; skipped, with the reason, where none exists.
test-py310: $(STAMP)
	VENV=$(VENV) bash scripts/test-py310.sh

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench.edge
	$(BIN)/python -m bench.fallback
	$(BIN)/python -m bench.cascade
	$(BIN)/python -m bench.batching
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.federation
	$(BIN)/python -m bench.ota
	$(BIN)/python -m bench.delta
	$(BIN)/python -m bench.faults
	$(BIN)/python -m bench.load
	$(BIN)/python -m bench.broker
	$(BIN)/python -m bench.telemetry

clean:
	rm -rf .fedge-demo demo-report .pytest_cache .ruff_cache
