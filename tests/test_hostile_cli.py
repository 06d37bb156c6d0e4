"""Every subcommand against hostile input, in one generated table.

For each command (convert, inspect, eval, search, portable, export-torch, export-nir, export-stream,
doctor) the rows are generated from what it reads and writes:

- every input file it takes is replaced, one at a time, by each hostile file that fits its
  kind (a model: missing, a folder, empty, not ONNX, truncated, a pipe, a device, an .npz;
  data: missing, empty, not numpy, an .npz holding a pickle, NaN, the wrong shape, a pipe, a
  device);
- every output (-o, search's --out) is pointed at each of its inputs, by the same path,
  ``./x``, ``../folder/x``, a hard link and a symlink, and at a device (a /dev/null made in
  the folder), a pipe, ``newdir/``;
- every number it takes gets a huge and a negative value.

Each row must: exit non-zero through click (no crash), print no traceback, end with a
one-line ``Error: ...`` that names the file, option or node, and write nothing: the working
folder (hidden files included, each file's bytes) is the same before and after.

The rest: --threads above the cores is capped and said; a 245-character output name is
written; SIGTERM and SIGINT during a write leave no temporary file and say what was written.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnx2burst.cli import main
from onnx2burst.io import save_model
from tests.signals import signal_when
from tests import fixtures_models as fm

HUGE = str(10**20)
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ the files of a run
def _x(n=16, seed=0, shape=(2, 6, 6)):
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype(np.float32)


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    """model.onnx (fm.residual), calib.npy, guard.npz, data.npz (labelled), snn.onnx (its SNN,
    converted once)."""
    import onnx2burst

    d = tmp_path_factory.mktemp("kit")
    save_model(fm.residual(), d / "model.onnx")
    np.save(d / "calib.npy", _x())
    np.savez(d / "guard.npz", x=_x(8, seed=2))
    np.savez(d / "data.npz", x=_x(8, seed=3), labels=np.arange(8) % 3)
    save_model(onnx2burst.convert(d / "model.onnx", d / "calib.npy", T=2, samples=16), d / "snn.onnx")
    return d


def _objects_npz(p: Path) -> None:
    a = np.empty(2, dtype=object)
    a[:] = [{"x": 1}, None]
    np.savez(p, x=a)  # np.savez pickles an object array


def _npz_bytes(p: Path) -> None:
    with open(p, "wb") as f:
        np.savez(f, x=_x(2))


def _device(p: Path) -> None:
    """A character device like /dev/null (1, 3), made here: a regression must not replace the real one."""
    try:
        os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pytest.skip("making a device node needs root")


def _no_relu():
    m = fm.residual()
    for node in m.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Identity"
    return m


#: hostile files: name -> (file name, how to make it in the folder; None: leave it missing)
HOSTILE = {
    "missing": ("nowhere.onnx", None),
    "folder": ("afolder", lambda p: p.mkdir()),
    "empty": ("empty.onnx", lambda p: p.write_bytes(b"")),
    "not-onnx": ("text.onnx", lambda p: p.write_bytes(b"definitely not a model\n" * 20)),
    "truncated": ("cut.onnx", lambda p: p.write_bytes(fm.residual().SerializeToString()[:300])),
    "pipe": ("pipe.onnx", lambda p: os.mkfifo(p)),
    "device": ("/dev/null", None),
    "npz-as-model": ("arrays.onnx", _npz_bytes),
    "no-relu": ("norelu.onnx", lambda p: save_model(_no_relu(), p)),
    "data-missing": ("nowhere.npy", None),
    "data-empty": ("empty.npy", lambda p: p.write_bytes(b"")),
    "data-not-numpy": ("text.npy", lambda p: p.write_bytes(b"1,2,3\n")),
    "data-pickle": ("pickle.npz", _objects_npz),
    "data-nan": ("nan.npy", lambda p: np.save(p, np.full((4, 2, 6, 6), np.nan, np.float32))),
    "data-shape": ("shape.npy", lambda p: np.save(p, _x(4, shape=(3, 6, 6)))),
    "data-pipe": ("pipe.npy", lambda p: os.mkfifo(p)),
    "data-device": ("/dev/zero", None),
}
MODEL_KINDS = ["missing", "folder", "empty", "not-onnx", "truncated", "pipe", "device", "npz-as-model"]
DATA_KINDS = ["data-missing", "data-empty", "data-not-numpy", "data-pickle", "data-nan", "data-shape", "data-pipe",
              "data-device"]


@dataclass
class Command:
    """A subcommand: its arguments with {slots} for files, the kind of each slot, and its
    outputs and numbers."""

    name: str
    argv: list[str]
    slots: dict[str, str]                     # slot -> "model" or "data"
    outputs: list[str] = field(default_factory=list)   # options that name a file written
    numbers: list[str] = field(default_factory=list)   # options that take a number
    extra: list[str] = field(default_factory=list)     # hostile kinds beyond the slot kind's (slot:kind)


COMMANDS = [
    Command("convert", ["convert", "{model}", "--calib", "{calib}", "--T", "2", "-q", "-o", "{out}"],
            {"model": "model", "calib": "data"}, ["-o"],
            ["--T", "--psi", "--tau", "--calib-samples", "--batch-size", "--seed", "--max-image-pixels", "--threads",
             "--max-memory", "--psi-max", "--psi-target", "--search-samples", "--ssc-folds", "--energy-ratio",
             "--r"], ["model:no-relu"]),
    Command("convert-guarded", ["convert", "{model}", "--calib", "{calib}", "--ssc", "--guard-data", "{guard}",
                                "--T", "2", "-q", "-o", "{out}"],
            {"guard": "data"}, ["-o"], ["--guard-samples", "--guard-checks", "--guard-tol", "--guard-z"]),
    Command("inspect", ["inspect", "{model}"], {"model": "model"}),
    Command("eval", ["eval", "{model}", "{snn}", "--data", "{data}", "--json"],
            {"model": "model", "snn": "model", "data": "data"}, [],
            ["--batch-size", "--limit", "--threads", "--e-ac", "--e-mac", "--max-memory"]),
    Command("search", ["search", "{model}", "--calib", "{calib}", "--T", "2", "-q", "--r-sweep", "1",
                       "--snn", "{snn}", "--eval-data", "{data}", "--out", "{report}", "-o", "{out}"],
            {"model": "model", "calib": "data", "snn": "model", "data": "data"}, ["-o", "--out"],
            ["--T", "--psi", "--calib-samples", "--batch-size", "--threads", "--search-samples", "--seed"],
            ["model:no-relu"]),
    Command("portable", ["portable", "{snn}", "-o", "{out}"], {"snn": "model"}, ["-o"]),
    Command("export-torch", ["export-torch", "{snn}", "-o", "{out}"], {"snn": "model"}, ["-o"]),
    Command("export-nir", ["export-nir", "{snn}", "-o", "{out}"], {"snn": "model"}, ["-o"]),
    Command("export-stream", ["export-stream", "{snn}", "-o", "{out}"], {"snn": "model"}, ["-o"]),
    Command("doctor", ["doctor"], {}),
]
FILES = {"model": "model.onnx", "calib": "calib.npy", "guard": "guard.npz", "data": "data.npz", "snn": "snn.onnx"}
#: the inputs that are models (an output equal to them is "the input model")
NUMBER_NAMES = {"--max-memory": ("9" * 400, "-1")}



@dataclass
class Row:
    id: str
    command: Command
    replace: dict[str, str]                   # slot -> path (as typed) or an option's new value
    names: list[str]                          # what the error line must contain
    make: list = field(default_factory=list)  # (file name, maker) to create in the folder first
    options: list[str] = field(default_factory=list)  # extra arguments


def _rows() -> list[Row]:
    rows = []
    for c in COMMANDS:
        for slot, kind in c.slots.items():
            kinds = MODEL_KINDS if kind == "model" else DATA_KINDS
            kinds = kinds + [k.split(":")[1] for k in c.extra if k.startswith(slot + ":")]
            for k in kinds:
                name, maker = HOSTILE[k]
                if c.name == "eval" and slot == "snn" and k == "no-relu":
                    continue
                rows.append(Row(f"{c.name}-{slot}-{k}", c, {slot: name}, [os.path.basename(name)],
                                [(name, maker)] if maker else []))
        for opt in c.outputs:
            slot = "out" if opt == "-o" else "report"
            for target in [f for s, f in FILES.items() if "{%s}" % s in " ".join(c.argv)]:
                for how, typed in (("same", target), ("dot", f"./{target}"), ("dotdot", f"../{{root}}/{target}"),
                                   ("hardlink", f"hl-{target}"), ("symlink", f"sl-{target}")):
                    if opt == "--out":  # --out is a folder: aim one of its files at the input
                        continue
                    rows.append(Row(f"{c.name}-output-{opt}-{how}-{target}", c, {slot: typed},
                                    [opt, os.path.basename(typed)]))
            for bad, make in (("adevice", _device), ("apipe", lambda p: os.mkfifo(p)), ("newdir/", None),
                              ("newdir/.", None), ("afolder", lambda p: p.mkdir())):
                if opt == "--out" and bad not in ("adevice", "apipe"):
                    continue  # a folder to make, or one that exists: what --out takes
                rows.append(Row(f"{c.name}-output-{opt}-{bad}", c, {slot: bad}, [bad.rstrip("/.") or bad],
                                [(bad, make)] if make else []))
        if "--out" in c.outputs:  # -o is one of the files --out gets
            rows.append(Row(f"{c.name}-output-clash", c, {"out": "rep/search.json"}, ["-o", "search.json"],
                            [("rep", lambda p: p.mkdir())]))
        for opt in c.numbers:
            huge, negative = NUMBER_NAMES.get(opt, (HUGE, "-1"))
            for what, value in (("huge", huge), ("negative", negative)):
                if opt in ("--tau", "--energy-ratio", "--r", "--guard-tol", "--guard-z", "--e-ac", "--e-mac") \
                        and what == "huge":
                    value = "nan"  # a float option's "huge" is 1e400 (inf) or nan: both refused
                rows.append(Row(f"{c.name}-number-{opt}-{what}", c, {}, [opt], options=[opt, value]))
    search = next(c for c in COMMANDS if c.name == "search")
    rows.append(Row("search-number---r-sweep-many", search, {}, ["--r-sweep"],
                    options=["--r-sweep", ",".join(str(v) for v in range(1, 102))]))
    rows.append(Row("search-number---r-sweep-negative", search, {}, ["--r-sweep"], options=["--r-sweep", "-1"]))
    rows.append(Row("convert-number---size-huge", COMMANDS[0], {}, ["--size"], options=["--size", HUGE]))
    rows.append(Row("convert-number---mean-nan", COMMANDS[0], {}, ["--mean"], options=["--mean", "nan"]))
    rows.append(Row("doctor-extra-argument", COMMANDS[-1], {}, ["unexpected extra argument"], options=["x.onnx"]))
    rows.append(Row("doctor-unknown-option", COMMANDS[-1], {}, ["--bogus"], options=["--bogus"]))
    return rows


ROWS = _rows()


def _param(r: Row):
    return pytest.param(r, id=r.id)


# ------------------------------------------------------------------ checks
def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (hidden ones too): its type, and a regular file's bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), digest,
                                             os.readlink(p) if stat.S_ISLNK(st.st_mode) else None)
    return out


def error_line(output: str) -> str:
    """The text from ``Error: `` to the end, which must be one line."""
    assert "Error: " in output, output
    tail = output[output.index("Error: "):].rstrip("\n")
    assert "\n" not in tail, f"the error is not one line:\n{tail}"
    return tail


class _Timeout(BaseException):  # not swallowed by an `except Exception` of a reader
    pass


def _alarm(signum, frame):
    raise _Timeout("the command blocked (a pipe opened?)")


def _setup(root: Path, kit: Path, row: Row) -> list[str]:
    for name in FILES.values():
        shutil.copy(kit / name, root / name)
        os.link(root / name, root / f"hl-{name}")
        os.symlink(name, root / f"sl-{name}")
    for name, maker in row.make:
        maker(root / name)
    c = row.command
    subs = {**{s: f for s, f in FILES.items()}, "out": "out.file", "report": "rep"}
    subs.update(row.replace)
    argv = []
    for a in c.argv:
        for s, v in subs.items():
            a = a.replace("{%s}" % s, v)
        argv.append(a.replace("{root}", root.name))
    return argv + row.options


def invoke(argv: list[str], seconds: float = 10):
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return CliRunner().invoke(main, argv)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_hostile(row: Row, kit: Path, tmp_path: Path, monkeypatch):
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    argv = _setup(root, kit, row)
    before = snapshot(tmp_path)
    res = invoke(argv)
    assert not isinstance(res.exception, _Timeout), f"{argv}: blocked"
    assert isinstance(res.exception, SystemExit), f"{argv}: not handled: {res.exception!r}\n{res.output}"
    assert res.exit_code != 0, f"{argv}: exit 0\n{res.output}"
    assert "Traceback" not in res.output, res.output
    line = error_line(res.output)
    for name in row.names:
        assert name in line, f"{name!r} not named in: {line}"
    assert snapshot(tmp_path) == before, f"{argv} changed the folder:\n{res.output}"


def test_every_subcommand_has_rows():
    from onnx2burst.cli import COMMANDS as CLI

    covered = {r.command.argv[0] for r in ROWS}
    assert covered == set(CLI), set(CLI) ^ covered
    assert len(ROWS) > 150


# ------------------------------------------------------------------ what is accepted
def test_threads_above_the_cores_are_capped(kit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from onnx2burst.cli.options import available_cores

    res = invoke(["convert", str(kit / "model.onnx"), "--calib", str(kit / "calib.npy"), "--T", "2", "-q",
                  "--threads", "1000", "-o", "s.onnx"], seconds=60)
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.output.splitlines() if "--threads" in ln]
    assert notes == [f"note: --threads 1000 is more than the {available_cores()} core(s) available; using "
                     f"{available_cores()}"]
    assert (tmp_path / "s.onnx").is_file()


def test_long_output_name_fits(kit, tmp_path):
    """A 245-character name (NAME_MAX is 255 bytes): the temporary name is shortened to fit."""
    from onnx2burst.io import write_file

    name = "n" * 240 + ".onnx"
    res = invoke(["convert", str(kit / "model.onnx"), "--calib", str(kit / "calib.npy"), "--T", "2", "-q",
                  "-o", str(tmp_path / name)], seconds=60)
    assert res.exit_code == 0, res.output
    write_file(tmp_path / ("é" * 127 + "x"), b"{}")  # 255 bytes, characters of two bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "é" * 127 + "x"])
    res = invoke(["convert", str(kit / "model.onnx"), "--calib", str(kit / "calib.npy"), "-q",
                  "-o", str(tmp_path / ("n" * 256))])
    assert res.exit_code != 0 and "more than the file system allows" in error_line(res.output)


def test_output_inside_an_input_folder_is_refused(tmp_path):
    from onnx2burst.errors import ModelSaveError
    from onnx2burst.io import check_output

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "notes.txt").write_text("kept")
    src = {"the calibration data (--calib)": images}
    for out in (images / "sub" / "a.png", images / "B.JPG", images / "notes.txt"):  # read next time; replaced
        with pytest.raises(ModelSaveError, match=r"inside the calibration data \(--calib\)"):
            check_output(out, sources=src)
    for out in (tmp_path / "out.onnx", images / "model.snn.onnx"):  # not an image: the folder reader skips it
        assert check_output(out, sources=src) == out


def test_output_over_the_models_external_data_is_refused(tmp_path):
    """The weights file of the input model is an input too: -o naming it is refused."""
    import onnx

    onnx.save_model(fm.residual(c=16), str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    np.save(tmp_path / "calib.npy", _x())
    before = snapshot(tmp_path)
    for out in ("w.bin", "./w.bin"):
        res = invoke(["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"), "-q",
                      "-o", str(tmp_path / out)])
        assert res.exit_code != 0 and "external data" in error_line(res.output), res.output
    assert snapshot(tmp_path) == before


def test_finite_float_refuses_nan_and_inf():
    import click

    from onnx2burst.cli.options import FiniteFloat

    t = FiniteFloat(min=0)
    assert t.convert("1.5", None, None) == 1.5
    for bad in ("nan", "inf", "1e400", "-1"):
        with pytest.raises(click.BadParameter):
            t.convert(bad, None, None)


def test_signal_handlers_are_restored_and_ignored_ones_kept():
    """The CLI handles SIGTERM/SIGHUP only while a command runs, and leaves an ignored one (nohup)
    ignored."""
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        term = signal.getsignal(signal.SIGTERM)
        assert invoke(["doctor"]).exit_code == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is term
    finally:
        signal.signal(signal.SIGHUP, old)


# ------------------------------------------------------------------ stopped while writing
_SLOW_WRITE = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, whatever this was started from
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
real, calls = os.fsync, []
def slow(fd):
    calls.append(fd)
    if len(calls) == int(os.environ["SLOW_AT"]):
        print("WRITING", file=sys.stderr, flush=True)
        time.sleep(60)
    real(fd)
os.fsync = slow
from onnx2burst.cli import main
main()
"""


def _stop_while_writing(argv, cwd: Path, sig, slow_at: int = 1) -> tuple[int, str]:
    """Run ``onnx2burst argv`` with its ``slow_at``-th file write held up; send ``sig`` then."""
    env = dict(os.environ, SLOW_AT=str(slow_at), PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", _SLOW_WRITE, *argv], cwd=cwd, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rc, output = signal_when(p, "WRITING", sig, wait=60)
    return rc, output.replace("WRITING\n", "")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_signal_during_the_write_leaves_nothing(kit, tmp_path, sig, code):
    for name in ("model.onnx", "calib.npy"):
        shutil.copy(kit / name, tmp_path / name)
    before = snapshot(tmp_path)
    rc, output = _stop_while_writing(["convert", "model.onnx", "--calib", "calib.npy", "--T", "2", "-q",
                                      "-o", "s.onnx"], tmp_path, sig)
    assert rc == code, output
    assert "Traceback" not in output, output
    assert output.strip().splitlines()[-1].endswith("nothing was written"), output
    assert snapshot(tmp_path) == before                       # no .tmp, no s.onnx


def test_interrupted_search_says_what_it_wrote(kit, tmp_path):
    for name in ("model.onnx", "calib.npy"):
        shutil.copy(kit / name, tmp_path / name)
    rc, output = _stop_while_writing(["search", "model.onnx", "--calib", "calib.npy", "--T", "2", "-q",
                                      "--r-sweep", "", "--out", "rep"], tmp_path, signal.SIGINT, slow_at=2)
    assert rc == 130, output
    last = output.strip().splitlines()[-1]
    assert "search.json" in last and "nothing was written" not in last, output
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["search.json"]
