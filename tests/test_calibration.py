"""Calibration data readers: every source, and clear errors."""
import pickle

import numpy as np
import pytest

from onnx2burst.data import CalibrationSet, input_specs, load_data
from onnx2burst.config import ImageOptions
from onnx2burst.errors import CalibrationDataError
from tests import fixtures_models as fm

MODEL = fm.residual()          # x: [N, 2, 6, 6] float32


def _x(n=10, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 2, 6, 6)).astype(np.float32)


def test_npy_npz_arrays_and_subset(tmp_path):
    x = _x(20)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "a.npz", x=x, labels=np.arange(20), extra=np.zeros(3))
    s1 = load_data(tmp_path / "a.npy", MODEL)
    np.testing.assert_array_equal(s1.inputs["x"], x)
    s2 = load_data(str(tmp_path / "a.npz"), MODEL, samples=8, seed=3)
    assert len(s2) == 8 and s2.labels is not None
    np.testing.assert_array_equal(s2.inputs["x"], x[s2.labels])          # labels follow the subset
    s3 = load_data(tmp_path / "a.npz", MODEL, samples=8, seed=3)
    np.testing.assert_array_equal(s2.inputs["x"], s3.inputs["x"])        # seeded
    batches = list(s2.batches(3))
    assert [b["x"].shape[0] for b in batches] == [3, 3, 2]


def test_readers_and_iterables():
    x = _x(7)

    class Reader:  # onnxruntime's CalibrationDataReader protocol
        def __init__(self):
            self.k = 0

        def get_next(self):
            if self.k >= len(x):
                return None
            self.k += 2
            return {"x": x[self.k - 2:self.k]}

        def rewind(self):
            self.k = 0

    r = Reader()
    r.k = 4
    s = load_data(r, MODEL)
    np.testing.assert_array_equal(s.inputs["x"], x)                       # rewound first
    s = load_data(({"x": xi} for xi in x), MODEL, samples=5)     # single samples, generator
    np.testing.assert_array_equal(s.inputs["x"], x[:5])
    s = load_data([x[:3], x[3:]], MODEL)                          # arrays for a single input
    assert len(s) == 7
    assert isinstance(load_data(s, MODEL), CalibrationSet)


def test_shape_mismatch_shows_both(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((4, 2, 5, 6), np.float32))
    with pytest.raises(CalibrationDataError, match=r"bad\.npy.*\[4, 2, 5, 6\].*\[N, 2, 6, 6\]"):
        load_data(tmp_path / "bad.npy", MODEL)
    with pytest.raises(CalibrationDataError, match=r"rank 2.*rank 4"):
        load_data(np.zeros((4, 72), np.float32), MODEL)
    with pytest.raises(CalibrationDataError, match=r"float64.*float32"):
        load_data(np.zeros((4, 2, 6, 6)), MODEL)
    with pytest.raises(CalibrationDataError, match=r"missing: \['x'\]"):
        load_data({"input": _x(), "y": _x()}, MODEL)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_refused(bad):
    x = _x(5)
    x[3, 1, 2, 2] = bad
    with pytest.raises(CalibrationDataError, match=r"NaN or inf.*sample 3"):
        load_data(x, MODEL)


def test_empty_refused(tmp_path):
    with pytest.raises(CalibrationDataError, match="empty"):
        load_data(np.zeros((0, 2, 6, 6), np.float32), MODEL)
    with pytest.raises(CalibrationDataError, match="empty"):
        load_data(iter([]), MODEL)


def test_pickles_refused(tmp_path):
    obj = np.empty(3, dtype=object)
    obj[:] = [1, "a", None]
    np.save(tmp_path / "obj.npy", obj, allow_pickle=True)
    with pytest.raises(CalibrationDataError, match="pickle"):
        load_data(tmp_path / "obj.npy", MODEL)
    (tmp_path / "evil.npy").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CalibrationDataError, match="pickle"):
        load_data(tmp_path / "evil.npy", MODEL)
    np.savez(tmp_path / "obj.npz", x=obj)
    with pytest.raises(CalibrationDataError, match="pickle"):
        load_data(tmp_path / "obj.npz", MODEL)


def test_files_not_found_or_unsupported(tmp_path):
    with pytest.raises(CalibrationDataError, match="not found"):
        load_data(tmp_path / "nope.npz", MODEL)
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(CalibrationDataError, match="unsupported"):
        load_data(tmp_path / "d.csv", MODEL)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CalibrationDataError, match="broken.npz"):
        load_data(tmp_path / "broken.npz", MODEL)


def test_image_folder(tmp_path):
    from PIL import Image

    m = fm.maxpool_net()                                   # x: [N, 1, 8, 8]
    (tmp_path / "cls").mkdir()
    for k in range(5):
        Image.fromarray(np.full((16, 12), 50 * k, np.uint8)).save(tmp_path / "cls" / f"{k}.png")
    s = load_data(tmp_path, m, image=ImageOptions(mean=(0.5,), std=(0.25,)))
    assert s.inputs["x"].shape == (5, 1, 8, 8)
    np.testing.assert_allclose(np.sort(s.inputs["x"][:, 0, 0, 0]), [(50 * k / 255 - 0.5) / 0.25 for k in range(5)],
                               rtol=1e-5)
    s = load_data(tmp_path, m, samples=2, image=ImageOptions(size=(8, 8)))
    assert len(s) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationDataError, match="no images"):
        load_data(tmp_path / "empty", m)


def test_input_specs():
    (spec,) = input_specs(MODEL)
    assert spec.name == "x" and spec.shape == ("N", 2, 6, 6) and spec.dtype == np.float32
