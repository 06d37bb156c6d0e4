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
  Refuses to overwrite the source model or any other input of the run (``sources``).
  Weights go to an external data file ``<name>.data`` next to the output when the model is
  over 2 GB or when asked.
- ``write_file(path, data, source=..., sources=...)``: the same atomic, symlink-safe,
  umask-respecting write for any other output (reports, plots, TorchScript files).
- ``check_output(path, source, sources=...)``: every refusal of the writes above, before any
  work: an input of the run by any name (path, ``./x``, ``../d/x``, symlink, hard link), a
  folder or a name ending in ``/``, a device or pipe (``/dev/null``), a name too long.
- ``written_files()``: what this process has written so far (reported when it is stopped).
- ``file_sha256(path)`` / ``model_sha256(model)``: the fingerprint stored in metadata.
"""
from __future__ import annotations

import collections
import hashlib
import mmap
import os
import secrets
import stat
from pathlib import Path
from typing import Mapping

import onnx
from onnx import external_data_helper

from .errors import ModelLoadError, ModelSaveError

__all__ = ["load_model", "read_external_data", "save_model", "write_file", "check_output", "make_folder",
           "written_files", "writes_count", "file_sha256", "model_sha256", "PROTOBUF_LIMIT"]

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


#: temporary names are ``.<name>.<12 hex>.tmp``: what they add to the output's name
_TMP_EXTRA = len(".") + len(".") + 12 + len(".tmp")
#: the last paths written by this process, and how many were written in all (``written_files``;
#: the CLI reports them when it is stopped)
_WRITTEN: collections.deque[str] = collections.deque(maxlen=256)
_COUNT = [0]


def writes_count() -> int:
    """How many files ``save_model``/``write_file`` have put in place (and folders ``make_folder``
    created) in this process so far."""
    return _COUNT[0]


def written_files(since: int = 0) -> list[str]:
    """The paths written (``writes_count`` was ``since`` before them), in order; the last 256 at most."""
    n = _COUNT[0] - since
    return list(_WRITTEN)[-n:] if n > 0 else []


def _record(path: str) -> None:
    _WRITTEN.append(path)
    _COUNT[0] += 1


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _tmp_name(folder: Path, name: str) -> str:
    """``.<name>.<random>.tmp``, the name shortened (by characters, never splitting one) so that
    the whole fits in the folder's NAME_MAX bytes."""
    room = _name_max(folder) - _TMP_EXTRA
    stem = name
    while len(os.fsencode(stem)) > room and stem:
        stem = stem[:-1]
    return f".{stem}.{secrets.token_hex(6)}.tmp"


def _open_new(folder: Path, stem: str):
    """A new file in ``folder`` with a random name, mode 0666 minus the umask, never a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        tmp = folder / _tmp_name(folder, stem)
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
    _record(os.fspath(target))


def _inputs(source, sources) -> list[tuple[str, Path]]:
    """``[(what it is, path)]`` of the run's inputs: ``source`` (the input model) and
    ``sources`` (a mapping or pairs ``what -> path``; None and non-path values are skipped)."""
    pairs = list(sources.items()) if isinstance(sources, Mapping) else list(sources or ())
    if source is not None:
        pairs.insert(0, ("the input model", source))
    return [(what, Path(p)) for what, p in pairs if isinstance(p, (str, os.PathLike))]


def _mentions(path: Path, name: str) -> bool:
    """Whether the bytes of ``name`` occur in the file ``path`` (a fast scan, nothing parsed)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(os.fsencode(name)) >= 0
    except (OSError, ValueError):  # an empty file cannot be mapped
        return False


def _external_files(model: Path, name: str) -> list[Path]:
    """The external data files an ONNX file declares (inside its folder), looked for only when
    ``name`` occurs in it; [] when it cannot be read."""
    if not _mentions(model, name):
        return []
    try:
        m = onnx.load(os.fspath(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX: its reader reports that
        return []
    out = []
    for t in _external_tensors(m):
        loc = {e.key: e.value for e in t.external_data}.get("location", "")
        if loc and not os.path.isabs(loc) and ".." not in Path(loc).parts:
            out.append(model.parent / loc)
    return out


def _is_inside(folder_of_out: str, folder: str) -> bool:
    """Whether a file in ``folder_of_out`` lies in ``folder`` or below (both real paths)."""
    return os.path.commonpath([folder_of_out, folder]) == folder


def _collides(out: Path, src: Path) -> str | None:
    """How writing ``out`` would destroy input ``src``: ``"is"`` (the same file by any name: the
    same path, a symlink at either end, a hard link) or ``"inside"`` (in an input folder of
    images, replacing one of its files or adding one it would read)."""
    a, b = os.path.abspath(out), os.path.abspath(src)
    if a == b or os.path.realpath(out) == os.path.realpath(src):
        return "is"
    try:
        if os.path.exists(out) and os.path.exists(src) and os.path.samefile(out, src):
            return "is"
    except OSError:
        pass
    if os.path.isdir(src) and _is_inside(os.path.realpath(os.path.dirname(a)), os.path.realpath(src)):
        from .data.images import IMAGE_EXTENSIONS

        if os.path.lexists(out) or out.suffix.lower() in IMAGE_EXTENSIONS:
            return "inside"
    return None


def _folder_to_be(folder: Path, path: Path) -> None:
    """``folder`` exists as a writable folder, or can be made: its nearest existing ancestor is
    a writable folder and no part of it is a file."""
    probe = folder
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ModelSaveError(f"cannot write {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ModelSaveError(f"cannot write {path}: folder {probe} is not writable")


def check_output(path: str | os.PathLike, source: str | os.PathLike | None = None, *, sources=(),
                 option: str = "-o", create: bool = False) -> Path:
    """Raise ``ModelSaveError`` now if writing ``path`` would fail or destroy something, so that a
    command fails before any heavy work; returns ``path`` as a ``Path``.

    Refused: a name ending in ``/`` (or ``.``), a folder, a device, pipe or socket, a name longer
    than the file system allows, a missing or read-only folder (``create``: a folder that does
    not exist yet but can be made is fine), and any input of the run: ``source`` (the input
    model) or a path of ``sources`` (``{what: path}`` or pairs, e.g. ``{"--calib": calib}``),
    reached by the same path, ``./x``, ``../dir/x``, a symlink or a hard link; a path inside an
    input folder (images) is refused too. ``option`` names the output in messages."""
    raw = os.fspath(path)
    who = f"output {raw} ({option})"
    seps = (os.sep,) + ((os.altsep,) if os.altsep else ())
    if not raw:
        raise ModelSaveError(f"{option}: an empty output path; give a file name")
    if raw.endswith(seps) or os.path.basename(raw) in (".", ".."):
        raise ModelSaveError(f"{who} names a folder; give a file name")
    path = Path(raw)
    folder = path.parent if str(path.parent) else Path(".")
    limit = _name_max(folder if folder.is_dir() else Path("."))
    if len(os.fsencode(path.name)) > limit:
        raise ModelSaveError(f"{who}: the name is {len(os.fsencode(path.name))} bytes, more than the file "
                             f"system allows ({limit}); choose a shorter name")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ModelSaveError(f"cannot write {who}: {e.strerror or e}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise ModelSaveError(f"{who} is a folder; give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        raise ModelSaveError(f"{who} is not a regular file (a device, a pipe or a socket); refused")
    if st is not None and stat.S_ISLNK(st.st_mode) and os.path.exists(path) and not os.path.isfile(path):
        raise ModelSaveError(f"{who} is a symlink to {os.path.realpath(path)}, not a regular file (a folder, "
                             "a device or a pipe); refused")
    if create:
        _folder_to_be(folder, path)
    elif not folder.is_dir():
        raise ModelSaveError(f"cannot write {path}: folder {folder} does not exist")
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise ModelSaveError(f"cannot write {path}: folder {folder} is not writable")
    inputs = _inputs(source, sources)
    if isinstance(source, (str, os.PathLike)) and st is not None and os.path.isfile(source) and \
            _is_inside(os.path.realpath(folder), os.path.realpath(Path(source).parent)):
        # an existing file in the input model's folder may be its weights (external data)
        inputs += [("the input model's external data", p) for p in _external_files(Path(source), path.name)]
    for what, src in inputs:
        how = _collides(path, src)
        if how == "is" and what == "the input model":
            same = "" if os.path.abspath(path) == os.path.abspath(src) else f" {src}"
            raise ModelSaveError(f"{who} is the input model{same}; choose another output path ({option})")
        if how == "is":
            raise ModelSaveError(f"{who} is {what} {src}, an input of this run; choose another output path")
        if how == "inside":
            raise ModelSaveError(f"{who} is inside {what} {src}, an input folder of this run; write it elsewhere")
    return path


def make_folder(folder: str | os.PathLike) -> Path:
    """``mkdir -p folder``; the folders it creates are recorded like written files."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    try:
        for p in reversed(missing):
            p.mkdir()
            _record(os.fspath(p) + os.sep)
    except OSError as e:
        raise ModelSaveError(f"cannot create folder {folder}: {e.strerror or e}") from None
    return folder


def write_file(path: str | os.PathLike, data: bytes, *, source: str | os.PathLike | None = None,
               sources=(), option: str = "-o") -> Path:
    """Write ``data`` to ``path`` as ``save_model`` writes a model: a temporary file in the
    target folder renamed into place, a symlink at ``path`` replaced (never followed), the
    user's umask, and ``source`` (the input) or any of ``sources`` (see ``check_output``)
    never overwritten. Returns the path."""
    path = check_output(path, source, sources=sources, option=option)
    try:
        _write_atomic([data], path)
    except OSError as e:
        raise ModelSaveError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, source: str | os.PathLike | None = None,
               external_data: bool | None = None, sources=(), option: str = "-o") -> Path:
    """Write ``model`` to ``path`` atomically; returns the path.

    source: the model it was made from; writing over it is refused, as over any of
    ``sources`` (the run's other inputs, see ``check_output``). external_data: True writes the
    weights to ``<file name>.data`` beside the output; None (default) does so only when the
    model is too large for one protobuf (> 2 GB).
    """
    path = check_output(path, source, sources=sources, option=option)
    folder = path.parent if str(path.parent) else Path(".")
    if external_data is None:
        external_data = _weights_bytes(model) > PROTOBUF_LIMIT - _EXTERNAL_MARGIN
    if external_data:
        check_output(folder / (path.name + ".data"), source, sources=sources, option=f"{option}'s weights")
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
