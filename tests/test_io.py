"""io.py: the only protobuf I/O: clear load errors, safe external data, atomic writes."""
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx2burst.errors import ModelLoadError, ModelSaveError
from onnx2burst.io import file_sha256, load_model, save_model
from tests import fixtures_models as fm


def _bytes(m):
    return m.SerializeToString()


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("definitely not onnx\n" * 10)
    with pytest.raises(ModelLoadError, match="text.onnx"):
        load_model(tmp_path / "text.onnx")
    data = _bytes(fm.residual())
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cut.onnx"):
        load_model(tmp_path / "cut.onnx")
    with pytest.raises(ModelLoadError, match="folder"):
        load_model(tmp_path)


def test_roundtrip_and_external_data(tmp_path):
    m = fm.residual(c=16)
    p = save_model(m, tmp_path / "a.onnx")
    assert load_model(p) == m
    q = save_model(m, tmp_path / "b.onnx", external_data=True)
    assert (tmp_path / "b.onnx.data").is_file()
    assert os.path.getsize(q) < len(_bytes(m)) / 2
    back = load_model(q)
    for t1, t2 in zip(m.graph.initializer, back.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(t1), numpy_helper.to_array(t2))


def _external_model(tmp_path, location):
    m = fm.residual()
    t = m.graph.initializer[0]
    raw = numpy_helper.to_array(t).tobytes()
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        e = t.external_data.add()
        e.key, e.value = k, v
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(_bytes(m))
    return path, raw


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_escaping_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    path, _ = _external_model(tmp_path, location)
    with pytest.raises(ModelLoadError, match="refused|absolute"):
        load_model(path)


def test_external_data_symlink_escaping_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    path, _ = _external_model(tmp_path, "w.bin")
    os.symlink(tmp_path / "secret.bin", path.parent / "w.bin")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(path)


def test_external_data_inside_is_read(tmp_path):
    path, raw = _external_model(tmp_path, "w.bin")
    (path.parent / "w.bin").write_bytes(raw)
    m = load_model(path)
    np.testing.assert_array_equal(numpy_helper.to_array(m.graph.initializer[0]).tobytes(), raw)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old content")

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(ModelSaveError, match="No space left"):
        save_model(fm.residual(), out)
    assert out.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no temporary left behind


def test_symlink_at_output_is_replaced_not_followed(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    out = tmp_path / "out.onnx"
    os.symlink(target, out)
    save_model(fm.residual(), out)
    assert not out.is_symlink() and target.read_text() == "keep me"
    assert load_model(out) == fm.residual()


def test_refuses_overwriting_the_input(tmp_path):
    src = save_model(fm.residual(), tmp_path / "m.onnx")
    with pytest.raises(ModelSaveError, match="is the input model"):
        save_model(fm.residual(), tmp_path / "m.onnx", source=src)
    os.symlink(src, tmp_path / "alias.onnx")
    with pytest.raises(ModelSaveError, match="is the input model"):
        save_model(fm.residual(), tmp_path / "alias.onnx", source=src)
    with pytest.raises(ModelSaveError, match="does not exist"):
        save_model(fm.residual(), tmp_path / "no" / "x.onnx")


def test_umask_respected(tmp_path):
    old = os.umask(0o027)
    try:
        p = save_model(fm.residual(), tmp_path / "u.onnx")
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o640
    assert len(file_sha256(p)) == 64
