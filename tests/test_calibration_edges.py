"""Calibration data that cannot give a useful SNN is refused or reported, naming the layer or
file: activations that overflow float32, layers that never fire, 16-bit images."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

import onnx2burst
from onnx2burst.cli import main
from onnx2burst.config import ImageOptions
from onnx2burst.data import load_data
from onnx2burst.errors import CalibrationDataError
from tests import fixtures_models as fm


def test_overflowing_activations_are_refused_naming_the_layer(tmp_path):
    ann = fm.residual()
    x = fm.inputs(ann, 16) * np.float32(1e37)   # finite inputs, inf after the first conv
    with pytest.raises(CalibrationDataError, match="overflow") as e:
        onnx2burst.convert(ann, x, T=4, psi=4)
    assert "relu0" in str(e.value)
    onnx.save(ann, tmp_path / "ann.onnx")
    np.save(tmp_path / "x.npy", x)
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "x.npy"), "-q",
                                    "-o", str(tmp_path / "snn.onnx")])
    assert res.exit_code == 1 and "relu0" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "snn.onnx").exists()


def test_a_layer_that_never_fires_is_reported(tmp_path):
    ann = fm.conv_relu()          # y = relu(w x + b), w > 0, |b| < 0.2
    x = -np.ones((8, 1, 4, 4), np.float32)   # every pre-activation below zero
    res = onnx2burst.Converter(ann, onnx2burst.ConvertConfig(T=4, psi=4)).run(x)
    assert any("relu" in n and "never positive" in n for n in res.notes), res.notes
    ok = onnx2burst.Converter(ann, onnx2burst.ConvertConfig(T=4, psi=4)).run(fm.inputs(ann, 8, low=0.0))
    assert not any("never positive" in n for n in ok.notes)
    onnx.save(ann, tmp_path / "ann.onnx")
    np.save(tmp_path / "x.npy", x)
    out = CliRunner().invoke(main, ["convert", str(tmp_path / "ann.onnx"), "--calib", str(tmp_path / "x.npy"), "-q",
                                    "-o", str(tmp_path / "snn.onnx")])
    assert out.exit_code == 0 and "never positive" in out.output


def test_16_bit_images_keep_their_range(tmp_path):
    ann = fm.conv_relu()          # input [N, 1, 4, 4]
    r = np.random.default_rng(0)
    grey = r.integers(0, 65536, size=(4, 4), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")
    x = load_data(tmp_path, ann, image=ImageOptions()).inputs["x"]
    np.testing.assert_allclose(x[0, 0], grey / 65535.0, atol=1e-6)
    assert (x >= 1.0).mean() < 0.01
