# Fresh machine: `make demo` (environment + the demo) and `make test` (environment + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medssl-installed

.PHONY: env test demo clean

env: $(STAMP)

# Extras: dev (pytest, MONAI for the parity tests), dicom (compressed DICOM, SEG, networking), gpu (Triton:
# its interpreter checks the kernels on CPU), onnx (export and the ONNX Runtime backend), train (MONAI transforms).
# torch is installed first and pinned: that resolves to the CPU build on these machines, and the project's own
# `torch>=...` requirement is then already satisfied (no CUDA packages are pulled).
# The environment is rebuilt when pyproject.toml or this file changes.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,dicom,gpu,onnx,train]'
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/medssl demo

clean:
	rm -rf $(VENV) build *.egg-info
