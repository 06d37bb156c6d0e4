"""``onnx2burst search``: per-layer sensitivity/energy tables, BSR and SSC (docs/method.md §6-§8)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import click

from .options import (InputPath, build_calibration, build_search, build_snn, calibration_options, cli_errors,
                      read_guard_early, search_options, snn_options)


#: the most budgets --r-sweep may list (each is a rebuild and an evaluation)
MAX_SWEEP = 100


@click.command(name="search")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@snn_options
@calibration_options(required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for sensitivity.png, frontier.png and search.json.")
@click.option("--snn", "snn_path", type=InputPath(exists=True),
              help="MODEL's SNN, converted with the same --T/--psi/--calib (default: converted here).")
@search_options
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Also write the tuned SNN (chosen psi/tau, recalibrated) here.")
@click.option("--r-sweep", "r_sweep", default="0.5,1,2,4", show_default=True,
              help="SSC budgets to rebuild and evaluate (top-1 against spikes: table, r_sweep.png); '' skips.")
@click.option("--eval-data", type=InputPath(exists=True, folder_ok=True),
              help="Labelled data (.npz with labels) the r sweep is evaluated on (default: --calib).")
@click.option("--full-tables", is_flag=True,
              help="Measure every cell of the tables (default: skip the cells no choice within the budgets, "
                   "--r-sweep's included, can hold, and each layer's taus past its slack; search.json has "
                   "null there).")
@click.option("--json", "as_json", is_flag=True, help="Print search.json to stdout instead of tables.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def command(model, out_dir, snn_path, output, r_sweep, eval_data, full_tables, as_json, quiet, **kw):
    """Choose psi (BSR) and tau (SSC) per layer for MODEL's SNN, and report why (both unless
    --bsr or --ssc is given).

    For every neuron layer i and candidate k, S_i(k) is how far the SNN with only layer i
    changed is from the ANN (--sensitivity: the symmetric KL of class scores, the normalised
    squared error of any other output, e.g. a detector's heads), and E_i(k) that layer's
    spikes (or SynOps) per sample. BSR picks psi per layer with the least total S within the energy of a uniform
    psi; SSC then picks tau per layer with the least energy within the sensitivity of
    tau=1. Thresholds are refit and biases recalibrated after each (docs/method.md §8).

    Writes OUT/sensitivity.png (S against psi and tau per layer), OUT/frontier.png (the
    energy/sensitivity frontier, uniform configurations and the choice),
    OUT/r_sweep.png (SSC at each --r-sweep budget, rebuilt and evaluated: top-1 against
    spikes, to pick the trade-off) and OUT/search.json (every S_i(k), E_i(k), SynOps, the
    frontiers, the choices and the sweep).

    \b
    Example:
      onnx2burst search models/zoo/resnet20_fmnist.onnx --calib models/data/fmnist_calib.npz \\
          --T 8 --psi 4 --out report/ -o resnet20.tuned.snn.onnx
      python -m models.make_data --guard 16384    # held-out inputs for the SSC guard
      onnx2burst search models/zoo/resnet20_fmnist.onnx --calib models/data/fmnist_calib.npz \\
          --T 4 --ssc --guard-data models/cache/fmnist_guard.npz --guard-samples 16384 \\
          --guard-tol 0.5 --out report_t4/
      onnx2burst search models/zoo/resnet20_fmnist.onnx --calib models/data/fmnist_calib.npz \\
          --T 8 --psi 4 --workers 8 --out report/      # cells as Ray tasks on 8 CPUs
      onnx2burst search models/zoo/det_fmnist.onnx --calib models/data/det_fmnist_calib.npz \
          --T 8 --psi 4 --bsr --out report_det/       # a detector: normalised error of its heads
    """
    with cli_errors(model):
        from onnx2burst.config import ConvertConfig
        from onnx2burst.convert import Converter
        from onnx2burst.io import load_model, make_folder, save_model, write_file
        from onnx2burst.report.plots import plot_frontier, plot_sensitivity
        from onnx2burst import search as S

        try:
            rs = [float(v) for v in r_sweep.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"{r_sweep!r}: a comma list of numbers > 0", param_hint="--r-sweep") from None
        if any(not (math.isfinite(v) and v > 0) for v in rs):
            raise click.BadParameter(f"{r_sweep!r}: every r must be a finite number > 0", param_hint="--r-sweep")
        if len(rs) > MAX_SWEEP:  # each r is a rebuild and an evaluation
            raise click.BadParameter(f"{len(rs)} values; give at most {MAX_SWEEP}", param_hint="--r-sweep")
        snn_cfg = build_snn(kw)
        source, calib = build_calibration(kw)
        cfg = build_search(kw, default_both=True)
        if full_tables:
            import dataclasses

            cfg = dataclasses.replace(cfg, prune=False)
        files = _outputs(out_dir, output, model, bool(cfg.ssc and rs), {
            "the calibration data (--calib)": source, "the SNN (--snn)": snn_path,
            "the guard data (--guard-data)": cfg.guard.data if cfg.guard else None,
            "the evaluation data (--eval-data)": eval_data})
        conv = Converter(model, ConvertConfig(**snn_cfg, calibration=calib))
        progress = _progress(quiet or as_json)
        data = conv.load_data(source)
        cfg = read_guard_early(cfg, conv)
        sweep_data = eval_data or source
        if cfg.ssc and rs and eval_data:  # read and checked now, not after the search
            from onnx2burst.data import load_data

            sweep_data = load_data(eval_data, conv.source, image=calib.image, max_memory=calib.max_memory)
        snn = None
        if snn_path:   # a portable file folded back; no BurstIF node: refused before the search runs
            from onnx2burst.interop.portable import fold_back
            from onnx2burst.snn import read_snn

            snn = fold_back(load_model(snn_path))
            read_snn(snn)
        res = S.tune(conv, data, cfg, snn=snn, progress=progress, r_max=max(rs, default=None))
        sens = next(iter(res.measurements.values())).sensitivity
        if cfg.ssc and rs and not sens.classes_only:
            click.echo("note: no r sweep: it scores top-1 and class agreement, and this model's outputs are not "
                       "class scores (score the SNN with `onnx2burst eval --task detection`)", err=True)
            rs = []
        sweep = None
        if cfg.ssc and rs:
            before, points = S.sweep_r(conv, data, res, rs, sweep_data, cfg, progress=progress)
            sweep = (before, points)
        make_folder(out_dir)
        doc = {"model": os.fspath(model), "snn": None if snn_path is None else os.fspath(snn_path),
               "calib": str(source), "T": snn_cfg["T"], "psi": snn_cfg["psi"], "energy": cfg.energy, **res.to_dict(),
               "r_sweep": None if sweep is None else {"before_ssc": sweep[0].to_dict(),
                                                      "points": [p.to_dict() for p in sweep[1]],
                                                      "data": str(eval_data or source)}}
        write_file(files["search.json"], json.dumps(doc, indent=1).encode())
        steps = [(c, m.psi if c.kind == "psi" else m.tau, m.baseline_S)
                 for c, m in ((res.bsr, res.measurements.get("bsr")), (res.ssc, res.measurements.get("ssc")))
                 if c is not None]
        m0 = next(iter(res.measurements.values()))
        plot_sensitivity([tb for _, tb, _ in steps], files["sensitivity.png"],
                         title=f"{model.name}: {m0.samples} samples, T={m0.T}")
        plot_frontier([c for c, _, _ in steps], files["frontier.png"])
        if sweep is not None:
            from onnx2burst.report.plots import plot_r_sweep

            plot_r_sweep(sweep[1], files["r_sweep.png"], baseline=sweep[0],
                         title=f"{model.name}: SSC budget r, T={m0.T}")
        if output:
            save_model(res.model, files["-o"], source=model)
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    from rich.console import Console

    from onnx2burst.report.tables import search_tables

    con = Console()
    for t in search_tables(steps, res.timings, res.checks, res.guard):
        con.print(t)
    if sweep is not None:
        from onnx2burst.report.tables import sweep_table

        con.print(sweep_table(sweep[1], sweep[0]))
    con.print(f"sensitivity: {sens.summary()} (--sensitivity {cfg.sensitivity})")
    notes = sorted({n for m in res.measurements.values() for n in m.notes})
    for n in notes:
        con.print(f"[yellow]note:[/] {n}")
    con.print(f"wrote {out_dir}/search.json, sensitivity.png, frontier.png"
              + (", r_sweep.png" if sweep is not None else "") + (f"; SNN {output}" if output else ""))


def _outputs(out_dir: Path, output, model: Path, sweep: bool, inputs: dict) -> dict[str, Path]:
    """The files the run will write (OUT's, and -o), each checked now against the run's inputs
    and against each other: nothing is computed for outputs that could not be written."""
    from onnx2burst.errors import ModelSaveError
    from onnx2burst.io import check_output

    names = ["search.json", "sensitivity.png", "frontier.png"] + (["r_sweep.png"] if sweep else [])
    files = {n: check_output(out_dir / n, model, sources=inputs, option="--out", create=True) for n in names}
    if output:
        files["-o"] = check_output(output, model, sources=inputs)
        clash = [n for n in names if os.path.realpath(files[n]) == os.path.realpath(files["-o"])]
        if clash:
            raise ModelSaveError(f"output {output} (-o) is also the {clash[0]} that --out {out_dir} gets; "
                                 "choose another output path")
    return files


def _progress(quiet: bool):
    from .options import RichProgress

    return RichProgress(enabled=not quiet)
