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


def _retyped(model, elem):
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.elem_type = elem
    np_t = onnx.helper.tensor_dtype_to_np_dtype(elem)
    for t in m.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np_t), t.name))
    return m


@pytest.mark.parametrize("elem, name", [(onnx.TensorProto.FLOAT16, "float16"), (onnx.TensorProto.DOUBLE, "float64")])
def test_models_in_other_float_types_are_refused_saying_the_type(elem, name):
    from onnx2burst.errors import GraphError

    m = _retyped(fm.conv_relu(), elem)
    with pytest.raises(GraphError, match=f"'x' is {name}; onnx2burst converts float32"):
        onnx2burst.Converter(m, onnx2burst.ConvertConfig())


def test_an_input_without_batch_axis_is_refused():
    from onnx import TensorProto, helper, numpy_helper
    from onnx2burst.errors import GraphError

    g = helper.make_graph([helper.make_node("Gemm", ["x2", "w"], ["h"], name="fc"),
                           helper.make_node("Relu", ["h"], ["y"], name="relu")], "flat",
                          [helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                          [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.graph.input[0].type.tensor_type.shape.dim.pop(0)   # x2 [4]: features, no batch
    with pytest.raises(GraphError, match=r"input 'x2' has shape \[4\], no batch axis"):
        onnx2burst.Converter(m, onnx2burst.ConvertConfig())


def test_an_image_folder_for_a_channels_last_model_says_so(tmp_path):
    from onnx import TensorProto, helper

    m = fm.conv_relu()
    m.graph.input[0].type.CopyFrom(helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 28, 28, 1]))
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(CalibrationDataError, match="channels last"):
        load_data(tmp_path, m)
