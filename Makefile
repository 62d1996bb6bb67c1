# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
# The CPU build of torch that this machine keeps on disk; install it before anything asks for torch.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint clean bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/demo.sh

test: setup
	$(VENV)/bin/ruff check lora_hub tests bench scripts migrations
	$(VENV)/bin/pytest -n 2 $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check lora_hub tests bench scripts migrations
	$(VENV)/bin/ruff format --check lora_hub tests bench scripts migrations

clean:
	rm -rf .demo build dist
