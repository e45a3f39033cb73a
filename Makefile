# Quick start targets (see README). Everything lives in .venv; torch is installed first, pinned,
# so pip takes the local CPU wheel instead of pulling CUDA packages.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test test-min-diffusers clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[diffusers,test]"
	touch $@

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m torch_ternary.demo

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

# the integration tests again, against the oldest diffusers pyproject.toml allows (installed aside, from PyPI)
test-min-diffusers: setup
	HF_HUB_OFFLINE=1 $(BIN)/python tests/integrations/min_diffusers.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
