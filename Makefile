# make install: set up .venv and Mosquitto; make demo: the end-to-end demo; make test: lint, format check, tests.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedge-installed

.PHONY: install demo test lint format bench clean

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

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench.edge
	$(BIN)/python -m bench.fallback
	$(BIN)/python -m bench.batching
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.federation
	$(BIN)/python -m bench.ota

clean:
	rm -rf .fedge-demo .pytest_cache .ruff_cache
