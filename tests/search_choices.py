"""The psi/tau per layer that ``onnx2burst convert --bsr --ssc`` chooses for the bundled models,
and the budgets it chose them under: the record that a faster search chooses what the
reference implementation chose.

    python tests/search_choices.py                 # compare every case with tests/data/search_choices.json
    python tests/search_choices.py --write         # record this code's choices
    python tests/search_choices.py --root DIR ...  # run the code of another checkout (a git worktree)

Each case converts through the command line and reads the choices back from the file's
``onnx2burst.search`` metadata. ``--root`` imports ``onnx2burst`` from DIR instead of this
checkout (the kernel library of this environment is used), so an older commit's choices can
be recorded without touching this tree.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "tests" / "data" / "search_choices.json"
ZOO, DATA = "models/zoo/", "models/data/"
FMNIST = ["--calib", DATA + "fmnist_calib.npz", "--max-memory", "16G"]
SMALL = ["--calib-samples", "128", "--search-samples", "32", "--psi-max", "4", "--tau-grid", "1,1.5,2,3"]

#: name -> convert arguments (paths relative to the repository root); "small" cases are the test's
CASES = {
    "vgg_T4_small": [ZOO + "vgg_fmnist.onnx", "--T", "4", "--psi", "4", *FMNIST, "--bsr", "--ssc", *SMALL],
    "resnet20_T4_small": [ZOO + "resnet20_fmnist.onnx", "--T", "4", "--psi", "4", *FMNIST, "--bsr", "--ssc",
                          *SMALL],
    "vgg_T8": [ZOO + "vgg_fmnist.onnx", "--T", "8", "--psi", "4", *FMNIST, "--bsr", "--ssc"],
    "resnet20_T8": [ZOO + "resnet20_fmnist.onnx", "--T", "8", "--psi", "4", *FMNIST, "--bsr", "--ssc"],
}


def use_root(root: str | None) -> None:
    """Import ``onnx2burst`` from ``root`` (a checkout) instead of the installed package."""
    if not root:
        return
    import importlib.util

    spec = importlib.util.find_spec("onnx2burst.ops.library")  # this environment's kernel
    lib = Path(spec.origin).resolve().parent.parent / "_lib" / "libonnx2burst_ops.so" if spec else None
    for name in [m for m in sys.modules if m == "onnx2burst" or m.startswith("onnx2burst.")]:
        del sys.modules[name]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
    sys.path.insert(0, str(Path(root).resolve()))
    if lib is not None and lib.is_file():
        os.environ.setdefault("ONNX2BURST_OPS_LIBRARY", str(lib))
    else:  # the editable install keeps the library next to the installed package
        import site

        for d in site.getsitepackages():
            p = Path(d) / "onnx2burst" / "_lib" / "libonnx2burst_ops.so"
            if p.is_file():
                os.environ.setdefault("ONNX2BURST_OPS_LIBRARY", str(p))


def choices(name: str, workdir: Path, extra=()) -> dict:
    """Convert case ``name``; returns its settings per layer, the budgets and the seconds taken."""
    from click.testing import CliRunner

    from onnx2burst.cli import main

    out = workdir / f"{name}.snn.onnx"
    t = time.perf_counter()
    res = CliRunner().invoke(main, ["convert", *CASES[name], *extra, "-q", "-o", str(out)], catch_exceptions=False)
    seconds = time.perf_counter() - t
    if res.exit_code != 0:
        raise RuntimeError(f"{name}: convert failed: {res.output}")
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    search = json.loads(meta["onnx2burst.search"])
    settings = {k: [v["psi"], v["tau"]] for k, v in search["settings"].items()}
    return {"settings": settings, "bsr_budget": (search["bsr"] or {}).get("budget"),
            "ssc_budget": (search["ssc"] or {}).get("budget"), "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="record this code's choices")
    ap.add_argument("--root", help="import onnx2burst from this checkout")
    ap.add_argument("cases", nargs="*", help="case names (default: all)")
    args = ap.parse_args(argv)
    use_root(args.root)
    os.chdir(ROOT)
    names = args.cases or list(CASES)
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    bad = 0
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            got = choices(name, Path(d))
            want = record.get(name)
            same = want is not None and {k: v for k, v in got.items() if k != "seconds"} == \
                {k: v for k, v in want.items() if k != "seconds"}
            print(f"{name:<20} {got['seconds']:>7.1f} s  {'(recorded)' if args.write else 'same' if same else 'DIFFERS'}",
                  flush=True)
            if args.write:
                record[name] = got
            elif not same:
                bad += 1
                print(json.dumps(got), flush=True)
    if args.write:
        RECORD.write_text(json.dumps(record, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
