"""Without --batch-size the batch follows the memory budget (the smaller of 4 GiB and a quarter
of the memory available, or --max-memory), and the batch chosen is reported."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnx2burst
from onnx2burst.cli import main
from onnx2burst.config import CalibrationConfig, ConvertConfig
from onnx2burst.errors import ResourceLimitError
from onnx2burst.limits import DEFAULT_BUDGET, available_memory, memory_budget
from tests import fixtures_models as fm


def _conv(model, **calib):
    return onnx2burst.Converter(model, ConvertConfig(T=8, calibration=CalibrationConfig(samples=16, **calib)))


def _plan_bytes(conv, batch: int) -> int:
    keep = [n.output for n in conv.analysis.neurons]
    return conv._estimate(conv.canonical.model, batch, conv.canonical.info, keep).total


def test_default_budget():
    n, why = memory_budget(None)
    assert n == min(DEFAULT_BUDGET, available_memory() // 4) or abs(n - available_memory() // 4) < 2**28
    assert "budget" in why
    assert memory_budget("1G") == (2**30, "--max-memory")


def test_a_small_model_gets_batch_64_and_says_so():
    conv = _conv(fm.residual())
    assert conv.calibration.batch_size == 64
    res = conv.run(fm.inputs(fm.residual(), 16))
    assert any(n.startswith("batch size 64:") and "within the memory budget" in n for n in res.notes)


def test_the_batch_follows_max_memory():
    from pathlib import Path

    from onnx2burst.limits import process_memory

    ann = str(Path(__file__).resolve().parent.parent / "models" / "zoo" / "resnet20_fmnist.onnx")
    probe = _conv(ann, batch_size=8)
    gap = _plan_bytes(probe, 16) - _plan_bytes(probe, 8)
    assert gap > 2**20
    budget = process_memory() + _plan_bytes(probe, 8) + gap // 2   # batch 8 fits, 16 does not
    conv = _conv(ann, max_memory=budget)
    assert conv.calibration.batch_size == 8
    x = np.load(Path(ann).parent.parent / "data" / "fmnist_calib.npz")["input"][:16]
    snn = conv.run(x).model
    meta = {p.key: p.value for p in snn.metadata_props}
    assert meta["onnx2burst.calibration_samples"] == "16"


def test_too_little_memory_even_at_batch_1_is_one_line(tmp_path):
    ann = fm.residual()
    with pytest.raises(ResourceLimitError, match="batch 1"):
        _conv(ann, max_memory=_plan_bytes(_conv(ann, batch_size=1), 1) - 1)
    onnx.save(ann, tmp_path / "ann.onnx")
    np.save(tmp_path / "x.npy", fm.inputs(ann, 16))
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "x.npy"),
                                    "--max-memory", "1K", "-q", "-o", str(tmp_path / "snn.onnx")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and "--max-memory" in res.output
    assert not (tmp_path / "snn.onnx").exists()


def test_a_given_batch_size_is_kept():
    assert _conv(fm.residual(), batch_size=7).calibration.batch_size == 7
