"""``onnx2burst eval``: an ANN against its SNN: accuracy, agreement, KL, spikes, energy, speed."""
from __future__ import annotations

import json

import click

from onnx2burst.config import MAX_BATCH, MAX_SAMPLES

from .options import FiniteFloat, InputPath, max_memory_option, threads_option


@click.command(name="eval")
@click.argument("ann", type=click.Path(exists=True, dir_okay=False))
@click.argument("snn", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=InputPath(exists=True),
              help=".npz with the inputs (under the input names, or 'input'/'x' for one input) and optional "
                   "'labels', or .npy inputs.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1, MAX_BATCH),
              help="Samples per onnxruntime run (a model with a fixed batch runs at it).")
@click.option("--limit", type=click.IntRange(1, MAX_SAMPLES), help="Use only the first N samples.")
@threads_option
@click.option("--kernel/--no-kernel", default=None,
              help="Force the C++ BurstIF kernel on or off (default: use it when built).")
@click.option("--e-ac", default=0.9, show_default=True, type=FiniteFloat(min=0), help="Energy of one accumulate, pJ.")
@click.option("--e-mac", default=4.6, show_default=True, type=FiniteFloat(min=0),
              help="Energy of one multiply-accumulate, pJ.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--other-ann", is_flag=True,
              help="Compare even when the SNN's metadata says it was converted from another model.")
@click.option("--adaptive", is_flag=True,
              help="Also evaluate adaptive timesteps: each sample stops at its exit step (the rule convert --adaptive "
                   "stored, or --exit-confidence); timesteps, top-1, agreement, spikes, energy beside all T steps.")
@click.option("--exit-confidence", type=click.FloatRange(0, 1), default=None,
              help="Exit threshold c (implies --adaptive; overrides the stored one).")
@click.option("--exit-min-steps", type=click.IntRange(1, 4096), default=None,
              help="Earliest exit step (implies --adaptive; default: the stored rule's, else 1).")
@click.option("--task", type=click.Choice(["auto", "classification", "detection"]), default="auto", show_default=True,
              help="detection: mAP@0.5 and mAP@0.5:0.95 of outputs 'boxes'/'scores' against the COCO annotations of "
                   "DATA (docs/detection.md); auto: detection when DATA carries COCO annotations.")
@click.option("--figure", type=click.Path(dir_okay=False), default=None,
              help="--task detection: also draw both models' detections on the first images to this PNG.")
@max_memory_option
def command(ann, snn, data, batch_size, limit, threads, kernel, e_ac, e_mac, as_json, max_memory, other_ann,
            adaptive, exit_confidence, exit_min_steps, task, figure):
    """Compare ANN.onnx with its SNN.onnx on DATA.

    Reports top-1 of both (when the data has labels), how often they agree, the mean
    symmetric KL between their softmax outputs, spikes per sample per layer, SynOps, the
    energy estimate against the ANN's MACs (docs/method.md §7) and ms per sample.

    \b
    Example:
      onnx2burst eval models/zoo/resnet20_fmnist.onnx resnet20.snn.onnx \\
          --data models/data/fmnist_test.npz --json
      onnx2burst eval models/zoo/det_fmnist.onnx det.snn.onnx \\
          --data models/data/det_fmnist_test.npz --figure det.png
    """
    from onnx2burst.evaluation import evaluate

    from .options import RichProgress, cli_errors

    from onnx2burst.evaluation.detection import has_coco

    from .eval_detection import detection_command

    if task == "detection" or (task == "auto" and has_coco(data)):
        if adaptive or exit_confidence is not None or exit_min_steps is not None:
            raise click.UsageError("--adaptive/--exit-* score classifiers; DATA is a detection set (--task)")
        return detection_command(ann, snn, data, batch_size=batch_size, limit=limit, threads=threads, kernel=kernel,
                                 e_ac=e_ac, e_mac=e_mac, as_json=as_json, other_ann=other_ann, figure=figure)
    try:
        with cli_errors():
            r = evaluate(ann, snn, data, batch_size=batch_size, threads=threads, kernel=kernel,
                         limit=limit, e_ac_pj=e_ac, e_mac_pj=e_mac, progress=RichProgress(enabled=not as_json),
                         max_memory=max_memory, other_ann=other_ann)
            ad = None
            if adaptive or exit_confidence is not None or exit_min_steps is not None:
                from onnx2burst.evaluation.adaptive import adaptive_evaluate

                ad = adaptive_evaluate(ann, snn, data, confidence=exit_confidence, t_min=exit_min_steps,
                                       batch_size=batch_size, threads=threads, limit=limit, e_ac_pj=e_ac,
                                       e_mac_pj=e_mac, progress=RichProgress(enabled=not as_json))
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps({**r.to_dict(), **({"adaptive": ad.to_dict()} if ad else {})}, indent=2))
        return
    from rich.console import Console

    from onnx2burst.report.tables import eval_tables

    con = Console()
    for t in eval_tables(r):
        con.print(t)
    if ad is not None:
        from onnx2burst.report.adaptive import adaptive_table

        con.print(adaptive_table(ad))
    for n in r.notes + (ad.notes if ad else ()):
        con.print(f"[yellow]note:[/] {n}")
