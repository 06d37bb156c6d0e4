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


HELD = 500 * 2**20


@pytest.fixture
def steady_process(monkeypatch):
    """The process's own memory as the plan sees it, fixed: a long test run frees and takes
    memory between the budget's computation and the plan."""
    import onnx2burst.convert

    monkeypatch.setattr(onnx2burst.convert, "process_memory", lambda: HELD)
    return HELD


def test_the_batch_follows_max_memory(steady_process):
    from pathlib import Path

    ann = str(Path(__file__).resolve().parent.parent / "models" / "zoo" / "resnet20_fmnist.onnx")
    probe = _conv(ann, batch_size=8)
    gap = _plan_bytes(probe, 16) - _plan_bytes(probe, 8)
    assert gap > 2**20
    budget = steady_process + _plan_bytes(probe, 8) + gap // 2   # batch 8 fits, 16 does not
    conv = _conv(ann, max_memory=budget)
    assert conv.calibration.batch_size == 8
    x = np.load(Path(ann).parent.parent / "data" / "fmnist_calib.npz")["input"][:16]
    snn = conv.run(x).model
    meta = {p.key: p.value for p in snn.metadata_props}
    assert meta["onnx2burst.calibration_samples"] == "16"


def test_data_with_fewer_samples_than_asked_plans_the_batch_again(steady_process):
    """The batch planned for --calib-samples 4096 is planned again for the 16 samples the data holds."""
    from pathlib import Path

    ann = str(Path(__file__).resolve().parent.parent / "models" / "zoo" / "resnet20_fmnist.onnx")

    def conv(samples, **calib):
        return onnx2burst.Converter(ann, ConvertConfig(T=8, calibration=CalibrationConfig(samples=samples, **calib)))

    many, few = conv(4096, batch_size=8), conv(16, batch_size=8)
    assert _plan_bytes(many, 8) > _plan_bytes(few, 64)   # the data of 4096 samples outweighs batch 64
    c = conv(4096, max_memory=steady_process + _plan_bytes(many, 8) + 2**20)
    assert c.calibration.batch_size <= 8
    x = np.load(Path(ann).parent.parent / "data" / "fmnist_calib.npz")["input"][:16]
    data = c.load_data(x)
    assert len(data) == 16 and c.calibration.samples == 16 and c.calibration.batch_size == 64, c.batch_note
    assert c.batch_note.startswith("batch size 64:")


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


def test_the_library_caps_threads_at_the_cores_available():
    """ops.make_session(threads=...) as the CLI's --threads: more than the cores are capped with a
    warning, fewer than one refused naming the argument."""
    import warnings

    from onnx2burst import ops
    from onnx2burst.errors import ConfigError
    from onnx2burst.limits import available_cores

    m = fm.conv_relu()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sess = ops.make_session(m, kernel=False, threads=10**6)
    assert any(issubclass(w.category, ResourceWarning) and f"{available_cores()} core" in str(w.message)
               for w in caught)
    assert sess.get_session_options().intra_op_num_threads == available_cores()
    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
            ops.make_session(m, kernel=False, threads=bad)
