"""The search's cells as Ray tasks (--workers, docs/method.md §8): a local Ray instance of 2
workers gives the in-process tables bit for bit and the same choices; a failing worker is one
clear error."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx2burst import search as S
from onnx2burst.cli import main
from onnx2burst.search.prune import Prune
from snn_fixtures import ann_model, sample_data, snn_model

ray = pytest.importorskip("ray")

KW = dict(psis=(1, 2, 3), taus=(1.0, 1.5, 3.0), batch_size=16, threads=1)


def test_two_workers_give_the_in_process_tables():
    ann, snn = ann_model(), snn_model(T=4, psi=2)
    x = sample_data(40, seed=7)
    here = S.measure(ann, snn, x, **KW)
    there = S.measure(ann, snn, x, workers=2, **KW)
    assert not ray.is_initialized()  # the instance it started is gone
    for a, b in ((here.psi, there.psi), (here.tau, there.tau)):
        assert np.array_equal(a.kl, b.kl) and np.array_equal(a.S, b.S) and np.array_equal(a.spikes, b.spikes)
    assert here.baseline_S == there.baseline_S


def test_convert_with_two_workers_chooses_the_same(tmp_path):
    onnx.save(ann_model(), tmp_path / "ann.onnx")
    np.savez(tmp_path / "calib.npz", x=sample_data(48, seed=2))
    args = ["convert", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "calib.npz"), "--T", "4", "--psi", "2",
            "--bsr", "--ssc", "--search-samples", "32", "--psi-max", "3", "--tau-grid", "1,1.25,1.5,2,3",
            "--threads", "1", "-q"]
    meta = []
    for extra, out in (([], "here.onnx"), (["--workers", "2"], "there.onnx")):
        res = CliRunner().invoke(main, args + extra + ["-o", str(tmp_path / out)])
        assert res.exit_code == 0, res.output
        props = {p.key: p.value for p in onnx.load(str(tmp_path / out)).metadata_props}
        meta.append(json.loads(props["onnx2burst.search"]))
    assert meta[0]["settings"] == meta[1]["settings"]
    assert (tmp_path / "here.onnx").read_bytes() == (tmp_path / "there.onnx").read_bytes()


def test_a_failing_worker_is_one_clear_error(tmp_path):
    """Workers whose kernel library is not a library: the first task fails, the search stops
    with one line naming the layer, and the tasks still queued are cancelled."""
    from onnx2burst.ops import kernel_available
    from onnx2burst.search.cluster import SearchWorkerError

    if not kernel_available():
        pytest.skip("the kernel library is not built")
    bad = tmp_path / "libonnx2burst_ops.so"
    bad.write_text("not a shared library\n")
    ann, snn = ann_model(), snn_model(T=4, psi=2)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"ONNX2BURST_OPS_LIBRARY": str(bad)}})
    try:
        with pytest.raises(SearchWorkerError) as e:
            S.measure(ann, snn, sample_data(32, seed=1), kernel=True, workers=2, prune=Prune("tau", 1.0, 1.0), **KW)
    finally:
        ray.shutdown()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("search worker failed on layer relu")
    assert "libonnx2burst_ops.so" in msg or "library" in msg.lower()


def test_workers_and_address_are_exclusive():
    from onnx2burst.config import SearchConfig
    from onnx2burst.errors import ConfigError

    with pytest.raises(ConfigError, match="--workers"):
        SearchConfig(bsr=True, workers=2, ray_address="127.0.0.1:6379")
    with pytest.raises(ConfigError, match="--workers"):
        SearchConfig(bsr=True, workers=-1)


def test_ctrl_c_cancels_the_tasks_and_writes_nothing(tmp_path):
    """SIGINT while the Ray tasks of the sensitivity tables run: the command stops with its
    one-line message, no output file, no traceback."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from tests.signals import signal_when

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "r20.snn.onnx"
    exe = Path(sys.executable).with_name("onnx2burst")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from onnx2burst.cli import main; main()"]
    p = subprocess.Popen(cmd + ["convert", str(root / "models/zoo/resnet20_fmnist.onnx"), "--calib",
                                str(root / "models/data/fmnist_calib.npz"), "--calib-samples", "256", "--T", "4",
                                "--ssc", "--search-samples", "256", "--workers", "2", "-o", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # the baseline pass is done; a few seconds later Ray has started and the cells run (on 256
    # samples for most of a minute, so that the signal falls among them)
    rc, output = signal_when(p, "sensitivity baseline", signal.SIGINT, seconds=300, delay=12)
    assert rc != 0 and "interrupted" in output and "Traceback" not in output
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra,words", [(["--workers", "-1"], "--workers"),
                                         (["--workers", "2", "--ray-address", "127.0.0.1:1"], "--ray-address")])
def test_bad_worker_options_are_one_line(tmp_path, extra, words):
    onnx.save(ann_model(), tmp_path / "ann.onnx")
    np.savez(tmp_path / "calib.npz", x=sample_data(8, seed=2))
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "calib.npz"),
                                    "--bsr", *extra, "-o", str(tmp_path / "out.onnx")])
    assert res.exit_code != 0 and words in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out.onnx").exists()
