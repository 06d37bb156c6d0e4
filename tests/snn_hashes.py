"""SHA-256 of the SNN files ``onnx2burst convert`` writes for the bundled models, with and
without ``--bsr --ssc`` (and the SSC guard): the record that a change of the code leaves the
files it writes bit for bit as they were.

    python tests/snn_hashes.py            # convert every case, compare with tests/data/snn_hashes.json
    python tests/snn_hashes.py --write    # record the hashes of this code (after a deliberate change)

The hashes hold for one kind of CPU (onnxruntime's convolutions sum in an order that
depends on the instruction set): the file records which, and the test compares only there.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "tests" / "data" / "snn_hashes.json"
ZOO, DATA = "models/zoo/", "models/data/"
FMNIST = ["--calib", DATA + "fmnist_calib.npz"]
SEARCH = ["--calib-samples", "128", "--search-samples", "32", "--psi-max", "4", "--tau-grid", "1,1.5,2,3"]

#: name -> convert arguments (paths relative to the repository root)
CASES = {
    "vgg_T8": [ZOO + "vgg_fmnist.onnx", "--T", "8", "--psi", "4", *FMNIST],
    "vgg_max_T4": [ZOO + "vgg_max_fmnist.onnx", "--T", "4", "--psi", "4", *FMNIST],
    "resnet20_T8": [ZOO + "resnet20_fmnist.onnx", "--T", "8", "--psi", "4", *FMNIST],
    "resnet18_dvs_T4": [ZOO + "resnet18_fmnist_dvs.onnx", "--T", "4", "--psi", "4", "--calib-samples", "64",
                        "--calib", DATA + "fmnist_dvs_calib.npz"],
    "resnet20_bsr_ssc_T4": [ZOO + "resnet20_fmnist.onnx", "--T", "4", "--psi", "4", *FMNIST, "--bsr", "--ssc",
                            *SEARCH],
    "vgg_max_bsr_ssc_z_T4": [ZOO + "vgg_max_fmnist.onnx", "--T", "4", "--psi", "2", *FMNIST, "--bsr", "--ssc",
                             "--ssc-z", "1", "--energy", "synops", *SEARCH],
    "vgg_ssc_guard_T4": [ZOO + "vgg_fmnist.onnx", "--T", "4", "--psi", "4", *FMNIST, "--ssc", *SEARCH,
                         "--guard-data", DATA + "fmnist_test.npz", "--guard-samples", "256", "--guard-tol", "0.1"],
    "resnet20_ssc_folds_layer_guard_T4": [
        ZOO + "resnet20_fmnist.onnx", "--T", "4", "--psi", "4", *FMNIST, "--ssc", *SEARCH, "--ssc-folds", "2",
        "--guard-data", DATA + "fmnist_test.npz", "--guard-samples", "256", "--guard-mode", "layer"],
}


def cpu_kind() -> str:
    """The instruction sets onnxruntime's kernels choose between."""
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return "+".join(f for f in ("avx512f", "avx512_vnni", "avx2", "fma") if f in flags) or "none"


#: a budget large enough that the batch is 64 whatever memory the machine has free
BUDGET = ["--max-memory", "16G"]


def convert_hash(name: str, workdir: Path) -> str:
    from click.testing import CliRunner

    from onnx2burst.cli import main

    out = workdir / f"{name}.snn.onnx"
    res = CliRunner().invoke(main, ["convert", *CASES[name], *BUDGET, "-q", "-o", str(out)], catch_exceptions=False)
    if res.exit_code != 0:
        raise RuntimeError(f"{name}: convert failed: {res.output}")
    return hashlib.sha256(out.read_bytes()).hexdigest()


def main(argv=None) -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="record this code's hashes")
    ap.add_argument("cases", nargs="*", help="case names (default: all)")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    names = args.cases or list(CASES)
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {"cpu": cpu_kind(), "hashes": {}}
    bad = 0
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            h = convert_hash(name, Path(d))
            want = record["hashes"].get(name)
            print(f"{name:<36} {h[:16]}  {'(recorded)' if args.write else 'ok' if h == want else 'DIFFERS'}",
                  flush=True)
            if args.write:
                record["hashes"][name] = h
            elif h != want:
                bad += 1
    if args.write:
        record["cpu"] = cpu_kind()
        RECORD.write_text(json.dumps(record, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
