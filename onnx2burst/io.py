"""Loading and saving ONNX files: the only place where onnx2burst reads or writes protobuf files.

- ``load_model(path)``: clear errors for a missing file, not a regular file, a file that is
  not ONNX, or a truncated one; a file larger than a protobuf can be (2 GiB - 1) is refused
  before it is read. External data is supported, but every ``location`` must stay inside
  the model's folder: an absolute path, ``..`` or a symlink leading out is refused *before*
  anything is read. ``load_model(path, load_external_data=False)`` then
  ``read_external_data(model, path)`` lets a caller check declared sizes in between
  (``limits``).
- ``save_model(model, path)``: written to a temporary file in the target folder and moved
  into place with ``os.replace``: a failure leaves any old file intact, a symlink planted
  at the output path is replaced, never followed, and the file gets the user's umask.
  Refuses to overwrite the source model. Weights go to an external data file
  ``<name>.data`` next to the output when the model is over 2 GB or when asked.
- ``write_file(path, data, source=...)``: the same atomic, symlink-safe, umask-respecting
  write for any other output (reports, plots, TorchScript files).
- ``file_sha256(path)`` / ``model_sha256(model)``: the fingerprint stored in metadata.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import onnx
from onnx import external_data_helper

from .errors import ModelLoadError, ModelSaveError

__all__ = ["load_model", "read_external_data", "save_model", "write_file", "check_output", "file_sha256",
           "model_sha256", "PROTOBUF_LIMIT"]

#: protobuf cannot serialise a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1
_EXTERNAL_MARGIN = 64 * 2**20  # graph structure and metadata beside the weights


def _all_tensors(graph: onnx.GraphProto):
    """Initializers and tensor attributes of ``graph`` and of its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def _check_external_location(tensor: onnx.TensorProto, base: Path, path: Path) -> None:
    info = {e.key: e.value for e in tensor.external_data}
    loc = info.get("location", "")
    where = f"{path}: tensor {tensor.name!r} stores its data in {loc!r}"
    if not loc:
        raise ModelLoadError(f"{path}: tensor {tensor.name!r} is marked external but has no location")
    p = Path(loc)
    if p.is_absolute() or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
        raise ModelLoadError(f"{where}: an absolute path; external data must stay in the model's folder")
    if ".." in p.parts or ".." in loc.replace("\\", "/").split("/"):
        raise ModelLoadError(f"{where}: '..' leaves the model's folder; refused")
    real_base = base.resolve()
    target = (base / p).resolve()
    if target != real_base and real_base not in target.parents:
        raise ModelLoadError(f"{where}: resolves to {target}, outside the model's folder {real_base} "
                             "(a symlink?); refused")
    if not target.is_file():
        raise ModelLoadError(f"{where}: no such file ({target})")


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in _all_tensors(model.graph)
            if t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL]


def read_external_data(model: onnx.ModelProto, path: str | os.PathLike) -> onnx.ModelProto:
    """Read the external data of ``model`` (loaded from ``path`` without it) in place, after
    checking that every location stays inside the model's folder."""
    path = Path(path)
    external = _external_tensors(model)
    if not external:
        return model
    for t in external:
        _check_external_location(t, path.parent, path)
    try:
        external_data_helper.load_external_data_for_model(model, os.fspath(path.parent))
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot read its external data: {e}") from None
    return model


def load_model(path: str | os.PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX model, with its external data (checked to stay in the model's folder)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not an ONNX file")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a regular file (a device or a pipe?); refused")
    size = path.stat().st_size
    if size > PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"{path} is {size:,} bytes, more than a protobuf file can hold ({PROTOBUF_LIMIT:,} bytes, 2 GiB - 1); "
            "refused before reading it (a model this large keeps its weights in external data)")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - DecodeError, RuntimeError, ... all mean "not ONNX"
        raise ModelLoadError(f"{path} is not a readable ONNX model (not protobuf, or truncated): {e}") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(f"{path} is not an ONNX model (no graph found; truncated or another format?)")
    if not model.opset_import:
        raise ModelLoadError(f"{path}: the model imports no opset; not a valid ONNX model")
    for t in _external_tensors(model):
        _check_external_location(t, path.parent, path)
    if load_external_data:
        read_external_data(model, path)
    return model


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_sha256(model: onnx.ModelProto) -> str:
    """sha256 of the model's deterministic serialisation."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def _weights_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) + 4 * len(t.float_data) + 8 * len(t.int64_data) + 4 * len(t.int32_data)
               + 8 * len(t.double_data) for t in _all_tensors(model.graph))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _open_new(folder: Path, stem: str):
    """A new file in ``folder`` with a random name, mode 0666 minus the umask, never a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        tmp = folder / f".{stem}.{secrets.token_hex(6)}.tmp"
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    raise ModelSaveError(f"cannot create a temporary file in {folder}")


def _write_atomic(data_chunks, target: Path) -> None:
    tmp, fd = _open_new(target.parent, target.name)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in data_chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)  # replaces a symlink at target, never follows it
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_output(path: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Raise ``ModelSaveError`` now if ``save_model`` could not write ``path`` (a folder, a missing
    folder, or the source model itself); lets a command fail before any heavy work."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir() and not path.is_symlink():
        raise ModelSaveError(f"output {path} is a folder; give a file name")
    if not folder.is_dir():
        raise ModelSaveError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ModelSaveError(f"cannot write {path}: folder {folder} is not writable")
    if source is not None:
        src = Path(source)
        if _same_file(path, src) or os.path.abspath(path) == os.path.abspath(src):
            raise ModelSaveError(f"output {path} is the input model; choose another output path (-o)")
    return path


def write_file(path: str | os.PathLike, data: bytes, *, source: str | os.PathLike | None = None) -> Path:
    """Write ``data`` to ``path`` as ``save_model`` writes a model: a temporary file in the
    target folder renamed into place, a symlink at ``path`` replaced (never followed), the
    user's umask, and ``source`` (the input) never overwritten. Returns the path."""
    path = check_output(path, source)
    try:
        _write_atomic([data], path)
    except OSError as e:
        raise ModelSaveError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, source: str | os.PathLike | None = None,
               external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; returns the path.

    source: the model it was made from; writing over it is refused. external_data: True
    writes the weights to ``<file name>.data`` beside the output; None (default) does so
    only when the model is too large for one protobuf (> 2 GB).
    """
    path = check_output(path, source)
    folder = path.parent if str(path.parent) else Path(".")
    if external_data is None:
        external_data = _weights_bytes(model) > PROTOBUF_LIMIT - _EXTERNAL_MARGIN
    try:
        if external_data:
            data_name = path.name + ".data"
            m = onnx.ModelProto()
            m.CopyFrom(model)
            external_data_helper.convert_model_to_external_data(
                m, all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
            chunks = []
            offset = 0
            for t in _all_tensors(m.graph):
                if not external_data_helper.uses_external_data(t) or not t.HasField("raw_data"):
                    continue
                pad = (-offset) % 4096  # aligned as onnx does, so mmap-friendly readers work
                if pad:
                    chunks.append(b"\0" * pad)
                    offset += pad
                raw = t.raw_data
                external_data_helper.set_external_data(t, location=data_name, offset=offset, length=len(raw))
                chunks.append(raw)
                offset += len(raw)
                t.ClearField("raw_data")
            _write_atomic(chunks, folder / data_name)
            _write_atomic([m.SerializeToString()], path)
        else:
            _write_atomic([model.SerializeToString()], path)
    except ModelSaveError:
        raise
    except ValueError as e:  # protobuf refuses > 2 GB
        raise ModelSaveError(f"cannot serialise the model for {path}: {e}; use external data") from None
    except OSError as e:
        raise ModelSaveError(f"cannot write {path}: {e.strerror or e}") from None
    return path
