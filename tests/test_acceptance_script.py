"""benchmarks/search_acceptance.py: the targets, the sample draws and the summary."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from onnx2burst.data import CalibrationSet

_BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(_BENCH) not in sys.path:  # the scripts import benchmarks/common.py as `common`
    sys.path.insert(0, str(_BENCH))
_spec = importlib.util.spec_from_file_location("search_acceptance", _BENCH / "search_acceptance.py")
A = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(A)


@pytest.mark.parametrize("config,T,d_top1,ratio,want", [
    ("+BSR", 8, -0.20, 1.01, True),       # no spike bound for BSR
    ("+BSR", 8, -0.21, 0.90, False),
    ("+BSR", 4, -1.00, 1.00, None),       # reported only at T = 4
    ("+SSC", 4, -0.70, 0.850, True),      # on the bound is met
    ("+SSC", 4, -0.704, 0.8504, True),    # as printed: -0.70, 0.850
    ("+SSC", 4, -0.706, 0.80, False),     # printed -0.71
    ("+SSC", 8, -0.10, 0.8506, False),    # printed 0.851
    ("+BSR+SSC", 8, -0.30, 0.90, True),
    ("+BSR+SSC", 8, -0.32, 0.80, False),
    ("+BSR+SSC", 4, 0.00, 0.901, False),
    ("BS", 4, 0.0, 1.0, None),
])
def test_meets_the_issue_bounds(config, T, d_top1, ratio, want):
    assert A.meets(config, T, d_top1, ratio) is want


def test_permuted_draws():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    data = CalibrationSet({"input": x}, np.arange(10), "calib.npz")
    assert A.permuted(data, 0) is data
    d1, d1b, d2 = A.permuted(data, 1), A.permuted(data, 1), A.permuted(data, 2)
    # the same samples, labels kept with their inputs, in a seeded order
    assert sorted(d1.inputs["input"][:, 0]) == list(range(10))
    assert np.array_equal(d1.inputs["input"][:, 0], d1.labels)
    assert np.array_equal(d1.inputs["input"], d1b.inputs["input"])
    assert not np.array_equal(d1.inputs["input"], d2.inputs["input"])
    assert not np.array_equal(d1.inputs["input"], x)
    assert "draw 1" in d1.source


def test_summary_counts_the_draws_that_meet_the_bound():
    rows = [("m", 4, "+SSC", -0.5, 0.80, True), ("m", 4, "+SSC", -0.9, 0.70, False),
            ("m", 4, "+SSC", -0.6, 0.84, True), ("m", 4, "+BSR", 0.1, 1.0, None)]
    table = A.summary(rows)
    ssc = next(line for line in table if "+SSC" in line)
    assert "| 3 |" in ssc and "-0.60 (-0.90 to -0.50)" in ssc and "0.800 (0.700 to 0.840)" in ssc
    assert ssc.endswith("| 2 of 3 |")
    assert next(line for line in table if "+BSR" in line).endswith("|  |")
