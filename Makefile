# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
# The CPU build of torch that this machine keeps on disk; install it before anything asks for torch.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-hub-oldest lint typecheck format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/demo.sh

SOURCES := lora_hub tests bench scripts migrations

# lint (ruff, formatting, types, layer rules), then the whole suite
test: lint
	$(VENV)/bin/pytest -n 2 $(PYTEST_ARGS)
	VENV=$(VENV) bash scripts/test_hub_oldest.sh

# the Hub sync tests again with the oldest huggingface_hub pyproject.toml admits
test-hub-oldest: setup
	VENV=$(VENV) bash scripts/test_hub_oldest.sh

lint: setup
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format $(SOURCES)
	$(VENV)/bin/ruff check --fix $(SOURCES)

clean:
	rm -rf .demo build dist
