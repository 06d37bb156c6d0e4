"""Shared set-up of the benchmark scripts: paths, options, sessions, timing and results files.

A script imports it as ``common`` (``python benchmarks/x.py`` puts benchmarks/ first on
sys.path); importing it puts the repository root on sys.path, so that ``models`` and
``tests`` import too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
ZOO = ROOT / "models" / "zoo"
CALIB = ROOT / "models" / "data" / "fmnist_calib.npz"   # the bundled 512 calibration samples
ZOO_MODELS = ("vgg_fmnist", "vgg_max_fmnist", "resnet20_fmnist")


# ------------------------------------------------------------------ options

def int_list(spec: str) -> list[int]:
    """``"2,4,8"`` -> ``[2, 4, 8]`` (an argparse ``type``)."""
    try:
        return [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {spec!r}") from None


def float_list(spec: str) -> list[float]:
    """``"0,0.3"`` -> ``[0.0, 0.3]`` (an argparse ``type``)."""
    try:
        return [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {spec!r}") from None


class _Names(argparse.Action):
    """A list of names, comma- or space-separated (``--models a,b`` or ``--models a b``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [n for v in values for n in v.split(",") if n])


_NO = object()


def parser(doc: str, *, out: str | None = None, models: Iterable[str] | None = None, threads: bool = False,
           limit=_NO) -> argparse.ArgumentParser:
    """An ArgumentParser whose help is ``doc`` (the script's docstring, layout kept), with the
    options the scripts share, each only when asked for:

    out: ``--out PATH`` (a Path), by default ``benchmarks/results/<out>``;
    models: ``--models`` (a list, comma- or space-separated), by default ``models``;
    threads: ``--threads N``, onnxruntime's intra-op threads (default: onnxruntime's);
    limit: ``--limit N``, the first N test samples only, by default ``limit`` (None: all).
    """
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if models is not None:
        ap.add_argument("--models", nargs="*", action=_Names, default=list(models),
                        help=f"models of models/zoo, comma- or space-separated (default: {','.join(models)})")
    if limit is not _NO:
        ap.add_argument("--limit", type=int, default=limit,
                        help=f"the first N test samples only (default: {limit or 'all'})")
    if threads:
        ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    if out is not None:
        ap.add_argument("--out", type=Path, default=RESULTS / out, help=f"the results file (default: benchmarks/results/{out})")
    return ap


# ------------------------------------------------------------------ models and data

def model_path(name: str) -> Path:
    """The bundled model ``name`` (models/zoo/<name>.onnx)."""
    return ZOO / f"{name}.onnx"


def test_set(which: str = "subset", limit: int | None = None):
    """``(x, labels)`` of Fashion-MNIST's test images: "subset" the bundled 1000
    (models/data/fmnist_test.npz), "full" the 10k set (the Debian package); the first ``limit``."""
    from models.data import load_fmnist_test_npz

    x, labels = load_fmnist_test_npz("full" if which == "full" else None)
    return (x[:limit], labels[:limit]) if limit else (x, labels)


def machine() -> str:
    """The machine, for a results file: ``x86_64, 2 CPU cores``."""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores"


# ------------------------------------------------------------------ onnxruntime

def session(model, threads: int | None = None, *, kernel: bool | None = None, spinning: bool = False, **options):
    """``onnx2burst.ops.make_session`` with the benchmarks' defaults: idle pool threads sleep
    (``spinning=False``) -- with several sessions interleaved on a small shared machine, one
    session's spinning workers would otherwise steal the cores from the next one's run."""
    from onnx2burst import ops

    return ops.make_session(model, kernel=kernel, threads=threads, spinning=spinning, **options)


def predict(sess, inputs, batch: int) -> np.ndarray:
    """The session's first output on ``inputs`` (an array for its first input, or a dict name ->
    array), ``batch`` samples per run, concatenated."""
    if not isinstance(inputs, Mapping):
        inputs = {sess.get_inputs()[0].name: inputs}
    n = len(next(iter(inputs.values())))
    return np.concatenate([sess.run(None, {k: v[s:s + batch] for k, v in inputs.items()})[0]
                           for s in range(0, n, batch)])


def top1(sess, x, labels, batch: int = 256) -> float:
    """Top-1 (%) of the session's first output on ``x`` against ``labels``."""
    return 100.0 * float((predict(sess, x, batch).argmax(1) == labels).mean())


# ------------------------------------------------------------------ timing

def interleave(runs: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each of ``runs``, ``repeats`` times after one warm-up call each. Each
    repeat calls every run once, back to back, so that a drift in the machine's load hits all alike."""
    for f in runs.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def median(values: Iterable[float]) -> float:
    return float(statistics.median(values))


def ratio(a: Iterable[float], b: Iterable[float], scale: float = 1.0) -> float:
    """Median of the per-repeat ratios ``a[i] / (scale * b[i])`` of times measured back to back
    (see :func:`interleave`): a drift in the machine's load between repeats cancels out."""
    return median(x / (scale * y) for x, y in zip(a, b))


# ------------------------------------------------------------------ results

def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a ``*.tmp`` file beside it renamed into place), so a
    run that stops, or one reading the file meanwhile, never sees half a table. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=1) + "\n")


def load_store(path: str | os.PathLike, fresh: bool = False) -> dict:
    """The results of earlier runs kept in ``path`` (JSON), or {} with ``fresh`` or no file."""
    path = Path(path)
    return {} if fresh or not path.is_file() else json.loads(path.read_text())


# ------------------------------------------------------------------ search

def tune(conv, data, *, snn=None, **search):
    """``onnx2burst.search.tune`` on ``conv`` with ``SearchConfig(**search)`` (bsr, ssc, samples,
    tau_grid, ssc_z, ssc_folds, guard, ...), from ``snn``, without a progress display."""
    from onnx2burst import search as S
    from onnx2burst.config import SearchConfig

    return S.tune(conv, data, SearchConfig(**search), snn=snn, progress=None)
