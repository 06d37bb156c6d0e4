# onnx2burst: `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: all setup install test test-asan demo demo-detection data bench clean

all: test

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml $(wildcard custom_ops/*)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q scikit-build-core pytest hypothesis
	$(BIN)/pip install -q --no-build-isolation -e '.[test,torch]' $(TORCH)
	@touch $@

setup: $(STAMP)

# Rebuild the kernel (C++ changes) and reinstall.
install: $(BIN)/python
	$(BIN)/pip install -q --no-build-isolation -e '.[test,torch]' $(TORCH)
	@touch $(STAMP)

test: setup
	@$(BIN)/onnx2burst doctor
	$(BIN)/python -m pytest -q

test-asan: $(BIN)/python
	bash custom_ops/test_asan.sh

data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

# Convert the bundled ResNet-20 (T=8, psi=4) and print the ANN-vs-SNN table (trains nothing).
demo: setup
	@mkdir -p out
	$(BIN)/onnx2burst convert models/zoo/resnet20_fmnist.onnx --T 8 --psi 4 \
	    --calib models/data/fmnist_calib.npz -o out/resnet20_fmnist.snn.onnx
	$(BIN)/onnx2burst eval models/zoo/resnet20_fmnist.onnx out/resnet20_fmnist.snn.onnx \
	    --data models/data/fmnist_test.npz

# Convert the bundled ReLU detector (T=16, psi=4), print ANN vs SNN in mAP, draw out/detection.png.
demo-detection: setup
	@mkdir -p out
	$(BIN)/onnx2burst convert models/zoo/det_fmnist.onnx --T 16 --psi 4 \
	    --calib models/data/det_fmnist_calib.npz -o out/det_fmnist.snn.onnx
	$(BIN)/onnx2burst eval models/zoo/det_fmnist.onnx out/det_fmnist.snn.onnx \
	    --data models/data/det_fmnist_test.npz --figure out/detection.png

bench: setup
	$(BIN)/python benchmarks/kernel.py

clean:
	rm -rf build .deps $(VENV) .pytest_cache .hypothesis
