"""Security (README "Security"): model and data files from strangers.

One test per rule, each with a crafted hostile file, asserting the refusal message and that
nothing was executed (a pickle payload's marker file), read (spies on open, on the external
data loader, on decoders and on onnxruntime) or written (the folder's listing unchanged).
"""
import builtins
import importlib
import io
import os
import pickle
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from onnx import TensorProto, external_data_helper, helper, numpy_helper

import onnx2burst
from onnx2burst.data import load_data
from onnx2burst.cli import main
from onnx2burst.config import CalibrationConfig, ConvertConfig, ImageOptions
from onnx2burst.convert import Converter
from onnx2burst.errors import (CalibrationDataError, ConfigError, ModelLoadError, ModelSaveError,
                               ResourceLimitError)
from onnx2burst.io import PROTOBUF_LIMIT, load_model, save_model, write_file
from onnx2burst.limits import estimate, parse_bytes
from onnx2burst.evaluation import evaluate
from tests import fixtures_models as fm

MODEL = fm.residual()          # x: [N, 2, 6, 6] float32
convert_module = importlib.import_module("onnx2burst.convert")
PACKAGE = Path(onnx2burst.__file__).parent


def _listing(folder: Path) -> dict:
    return {p.name: (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.iterdir())}


@pytest.fixture
def no_sessions(monkeypatch):
    """Fails the test if an onnxruntime session is made."""
    made = []

    def spy(*a, **k):
        made.append(a)
        raise AssertionError("an onnxruntime session was made")

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return made


# ---------------------------------------------------------------- 1. no code from data
class _Payload:
    """Unpickling this creates ``marker``: proof that code from the data ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_in_calibration_files_never_run(tmp_path):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Payload(live)))
    assert live.exists()                                   # the payload is real
    marker = tmp_path / "pwned"
    obj = np.empty(1, dtype=object)
    obj[0] = _Payload(marker)
    np.save(tmp_path / "obj.npy", obj, allow_pickle=True)
    np.savez(tmp_path / "obj.npz", x=obj)
    np.savez(tmp_path / "meta.npz", x=fm.inputs(MODEL, 4), meta=obj)   # a pickle beside good data
    (tmp_path / "raw.npy").write_bytes(pickle.dumps({"x": _Payload(marker)}))
    for name in ("obj.npy", "obj.npz", "meta.npz", "raw.npy"):
        with pytest.raises(CalibrationDataError, match=rf"{name}.*pickle.*refused"):
            load_data(tmp_path / name, MODEL)
    with pytest.raises(CalibrationDataError, match="pickle"):
        onnx2burst.convert(MODEL, tmp_path / "obj.npz", T=2)
    assert not marker.exists()


def test_no_code_loading_calls_in_the_package():
    """No pickle/marshal/eval/exec, no torch.load without weights_only=True, no allow_pickle=True."""
    banned = [r"\bimport pickle\b", r"\bpickle\.loads?\(", r"\bmarshal\b", r"(?<![\w.])eval\(", r"(?<![\w.])exec\(",
              r"allow_pickle\s*=\s*True", r"yaml\.load\(", r"torch\.load\((?![^)]*weights_only\s*=\s*True)"]
    found = [f"{p.relative_to(PACKAGE)}: {m.group(0)}" for p in PACKAGE.rglob("*.py")
             for pat in banned for m in re.finditer(pat, p.read_text())]
    assert not found


# ---------------------------------------------------------------- 2. external data stays inside
def _external_model(folder: Path, location: str) -> Path:
    m = fm.residual()
    t = m.graph.initializer[0]
    raw = numpy_helper.to_array(t).tobytes()
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        e = t.external_data.add()
        e.key, e.value = k, v
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("location, message", [
    ("../../etc/passwd", r"'\.\./\.\./etc/passwd': '\.\.' leaves the model's folder; refused"),
    ("/etc/passwd", r"'/etc/passwd': an absolute path"),
    ("w.bin", r"'w\.bin': resolves to .*secret\.bin, outside the model's folder"),
])
def test_external_data_outside_the_folder_is_never_read(tmp_path, monkeypatch, no_sessions, location, message):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    path = _external_model(tmp_path / "model", location)
    if location == "w.bin":
        os.symlink(tmp_path / "secret.bin", path.parent / "w.bin")
    opened, loaded = [], []
    real_open = builtins.open

    def spy_open(f, *a, **k):
        opened.append(os.fspath(f) if not isinstance(f, int) else f)
        return real_open(f, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(external_data_helper, "load_external_data_for_model", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(external_data_helper, "load_external_data_for_tensor", lambda *a, **k: loaded.append(a))
    with pytest.raises(ModelLoadError, match=message):
        load_model(path)
    with pytest.raises(ModelLoadError, match=message):
        Converter(path)
    monkeypatch.setattr(builtins, "open", real_open)
    np.save(tmp_path / "x.npy", fm.inputs(MODEL, 4))
    before = _listing(path.parent)
    r = CliRunner().invoke(main, ["convert", str(path), "--calib", str(tmp_path / "x.npy"), "-q"])
    assert r.exit_code != 0 and re.search(message, r.output.replace("\n", " ")), r.output
    assert not loaded and not no_sessions
    assert not [f for f in opened if isinstance(f, str) and ("passwd" in f or "secret" in f or f.endswith("w.bin"))]
    assert _listing(path.parent) == before                   # nothing written beside the model


def test_external_data_is_written_only_beside_the_output(tmp_path):
    (tmp_path / "out").mkdir()
    out = save_model(fm.residual(c=16), tmp_path / "out" / "m.onnx", external_data=True)
    m = onnx.load(os.fspath(out), load_external_data=False)
    locations = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"m.onnx.data"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.onnx", "m.onnx.data"]


# ---------------------------------------------------------------- 3. bounded resources
def _huge_model(folder: Path, kind: str) -> Path:
    """A model declaring a 10**12-element float32 tensor: an initializer (its 16 bytes of
    external data beside it), or an intermediate (ConstantOfShape of a constant shape)."""
    m = fm.residual()
    if kind == "initializer":
        big = TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[10**6, 10**6])
        big.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "big.bin"), ("offset", "0"), ("length", "16")):
            e = big.external_data.add()
            e.key, e.value = k, v
        m.graph.initializer.append(big)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "big.bin").write_bytes(b"\0" * 16)
    else:
        m.graph.initializer.append(numpy_helper.from_array(np.array([10**6, 10**6], np.int64), "big_shape"))
        m.graph.node.append(helper.make_node("ConstantOfShape", ["big_shape"], ["big"], name="bomb"))
        m.graph.output.append(helper.make_tensor_value_info("big", TensorProto.FLOAT, None))
        folder.mkdir(parents=True, exist_ok=True)
    path = folder / "huge.onnx"
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("kind", ["initializer", "intermediate"])
def test_max_memory_refuses_a_10e12_element_tensor(tmp_path, monkeypatch, no_sessions, kind):
    path = _huge_model(tmp_path / "model", kind)
    ran = []
    monkeypatch.setattr(convert_module, "canonicalize", lambda *a, **k: ran.append("canonicalize"))
    monkeypatch.setattr(convert_module, "read_external_data", lambda *a, **k: ran.append("external data"))
    monkeypatch.setattr(convert_module, "load_data", lambda *a, **k: ran.append("data"))
    numbers = r"would need about \d+\.\d TiB \([\d,]+ bytes\), more than the limit of 8\.0 GiB \(8,589,934,592 bytes"
    with pytest.raises(ResourceLimitError, match=numbers) as e:
        onnx2burst.convert(path, fm.inputs(MODEL, 8), T=2, max_memory="8G")
    assert "'big' [1000000, 1000000] float32" in str(e.value)
    with pytest.raises(ResourceLimitError, match="more than the limit of .*the memory available now"):
        Converter(path, ConvertConfig(T=2))                  # default limit: the available memory
    np.save(tmp_path / "x.npy", fm.inputs(MODEL, 8))
    out = tmp_path / "model" / "huge.snn.onnx"
    before = _listing(tmp_path / "model")
    r = CliRunner().invoke(main, ["convert", str(path), "--calib", str(tmp_path / "x.npy"), "--T", "2",
                                  "--max-memory", "8G", "-o", str(out), "-q"])
    assert r.exit_code != 0 and re.search(numbers, r.output) and "'big'" in r.output, r.output
    assert not ran and not no_sessions and not out.exists() and _listing(tmp_path / "model") == before


def test_max_memory_values(tmp_path):
    assert parse_bytes("8G") == 8 * 2**30 and parse_bytes("512M") == 512 * 2**20
    assert parse_bytes("1.5GiB") == 3 * 2**29 and parse_bytes("1000") == 1000 and parse_bytes(None) is None
    for bad in ("lots", "-1G", "0", "8Q"):
        with pytest.raises(ConfigError, match="--max-memory"):
            CalibrationConfig(max_memory=bad)
    r = CliRunner().invoke(main, ["convert", "m.onnx", "--calib", "x.npy", "--max-memory", "lots"])
    assert r.exit_code != 0
    m = fm.residual()
    with pytest.raises(ResourceLimitError, match=r"SNN run \(batch T\*B = 4\*16 = 64"):
        onnx2burst.convert(m, fm.inputs(m, 16), T=4, batch_size=16, max_memory="4K")
    est = estimate(m, batch_size=16, T=4, samples=16)
    assert est.total < 2**20                               # a small model passes the default limit
    snn = onnx2burst.convert(m, fm.inputs(m, 16), T=4, batch_size=16, max_memory="1G")
    with pytest.raises(ResourceLimitError, match=r"evaluating \(batch 8, T=4\) would need about"):
        evaluate(m, snn, fm.inputs(m, 8), batch_size=8, max_memory="4K")
    assert evaluate(m, snn, fm.inputs(m, 8), batch_size=8, max_memory="1G").samples == 8


def test_oversized_protobuf_refused_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "big.onnx"
    with open(big, "wb") as f:
        f.truncate(PROTOBUF_LIMIT + 1)                    # sparse: no disk space used
    parsed = []
    monkeypatch.setattr(onnx, "load", lambda *a, **k: parsed.append(a))
    monkeypatch.setattr(onnx, "load_model", lambda *a, **k: parsed.append(a))
    with pytest.raises(ModelLoadError, match=r"big\.onnx is 2,147,483,648 bytes, more than a protobuf file can hold "
                                             r"\(2,147,483,647 bytes"):
        load_model(big)
    assert not parsed
    with pytest.raises(ModelLoadError, match="not a regular file"):
        load_model("/dev/zero")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_image_bomb_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import Image, ImageFile

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))   # 68 bytes, 10**10 pixels
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (decoded.append(self), real_load(self))[1])
    limit = Image.MAX_IMAGE_PIXELS
    m = fm.maxpool_net()                                    # x: [N, 1, 8, 8]
    with pytest.raises(CalibrationDataError, match=r"bomb\.png: the image declares 10,000,000,000 pixels; the limit "
                                                   r"is 67,108,864 pixels .*refused before decoding"):
        load_data(folder, m)
    (folder / "bomb.png").unlink()
    Image.fromarray(np.zeros((16, 12), np.uint8)).save(folder / "a.png")        # 192 pixels
    with pytest.raises(CalibrationDataError, match=r"a\.png: the image declares 192 pixels; the limit is 100 pixels"):
        load_data(folder, m, image=ImageOptions(max_pixels=100))
    with pytest.raises(CalibrationDataError, match=r"declares (12x16 = )?192 pixels; the limit is 191 pixels"):
        load_data(folder, m, image=ImageOptions(max_pixels=191))
    assert not decoded and Image.MAX_IMAGE_PIXELS == limit  # nothing decoded; Pillow's setting restored
    assert len(load_data(folder, m, image=ImageOptions(max_pixels=192))) == 1


def test_numpy_bombs_refused_from_their_headers(tmp_path, monkeypatch):
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 2, 6, 6)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", hdr.getvalue() + b"\0" * 64)
    read = []
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: read.append(a))
    with pytest.raises(ResourceLimitError, match=r"bomb\.npz: its arrays 'x' \[1000000000000, 2, 6, 6\] float32 "
                                                 r"need 261\.9 TiB \(288,000,000,000,000 bytes\) once decompressed, "
                                                 r"more than the limit .*refused before reading them"):
        load_data(tmp_path / "bomb.npz", MODEL)
    assert not read
    with open(tmp_path / "sparse.npy", "wb") as f:            # 48 MB declared, none of it on disk
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (10, 2, 6, 100_000)})
        f.truncate(f.tell() + 48_000_000)
    with pytest.raises(ResourceLimitError, match=r"sparse\.npy: 10 samples of shape \[2, 6, 100000\] float32 need "
                                                 r"45\.8 MiB .*more than the limit of 1\.0 MiB .*refused before"):
        load_data(tmp_path / "sparse.npy", MODEL, max_memory="1M")


# ---------------------------------------------------------------- 4. safe output
def test_symlink_at_the_output_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    src = save_model(MODEL, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", fm.inputs(MODEL, 8))
    out = tmp_path / "m.snn.onnx"
    os.symlink(victim, out)
    r = CliRunner().invoke(main, ["convert", str(src), "--calib", str(tmp_path / "x.npy"), "--T", "2",
                                  "--batch-size", "4", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "keep me" and not out.is_symlink()
    assert load_model(out).graph.node
    os.symlink(victim, tmp_path / "report.json")
    write_file(tmp_path / "report.json", b"{}")              # search.json, plots, TorchScript go this way
    assert victim.read_text() == "keep me" and (tmp_path / "report.json").read_bytes() == b"{}"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_output_over_the_input_refused_and_nothing_written(tmp_path, no_sessions):
    src = save_model(MODEL, tmp_path / "m.onnx")
    os.symlink(src, tmp_path / "alias.onnx")
    np.save(tmp_path / "x.npy", fm.inputs(MODEL, 8))
    before = _listing(tmp_path)
    for out in ("m.onnx", "alias.onnx"):
        r = CliRunner().invoke(main, ["convert", str(src), "--calib", str(tmp_path / "x.npy"), "-o",
                                      str(tmp_path / out), "-q"])
        assert r.exit_code != 0 and "is the input model" in r.output, r.output
        with pytest.raises(ModelSaveError, match="is the input model"):
            write_file(tmp_path / out, b"x", source=src)
    assert _listing(tmp_path) == before and not no_sessions


@pytest.mark.parametrize("umask, mode", [(0o077, 0o600), (0o022, 0o644)])
def test_output_files_get_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        a = save_model(fm.residual(c=16), tmp_path / "a.onnx", external_data=True)
        b = write_file(tmp_path / "b.json", b"{}")
    finally:
        os.umask(old)
    for p in (a, tmp_path / "a.onnx.data", b):
        assert (p.stat().st_mode & 0o777) == mode, (p, oct(p.stat().st_mode))
