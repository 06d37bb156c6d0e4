#!/usr/bin/env bash
# Build the BurstIF kernel with -fsanitize=address,undefined and run the operator (signed neurons too) , the one-step op (BurstIFStep) and NCHWc-layout
# tests (blocked steps, addend, time broadcast) on it.
# Any sanitizer report aborts the run (halt_on_error / -fno-sanitize-recover).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
inc=${ORT_INCLUDE_DIR:-}
cmake -S custom_ops -B build/asan -DCMAKE_BUILD_TYPE=Debug -DONNX2BURST_SANITIZE=ON ${inc:+-DORT_INCLUDE_DIR=$inc} >/dev/null
cmake --build build/asan -j 2 >/dev/null
lib=$(ls build/asan/libonnx2burst_ops.so)
preload="$(g++ -print-file-name=libasan.so):$(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
ONNX2BURST_OPS_LIBRARY="$PWD/$lib" LD_PRELOAD="$preload" "$PY" -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_step_op.py tests/test_layout.py tests/test_signed_neuron.py "$@"
