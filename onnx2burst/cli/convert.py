"""``onnx2burst convert``: a ReLU ANN in ONNX -> a burst-spiking SNN in ONNX."""
from __future__ import annotations

from pathlib import Path

import click

from .options import (InputPath, build_calibration, build_search, build_snn, calibration_options, cli_errors,
                      read_guard_early, search_options, snn_options)


@click.command(name="convert")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@snn_options
@calibration_options(required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Output file (default: MODEL.snn.onnx beside the input); never one of the inputs.")
@click.option("--per-timestep-output", is_flag=True,
              help="Add an output <name>_per_timestep [T, N, K] (any-time inference).")
@click.option("--no-bias-calibration", is_flag=True, help="Skip the layer-wise bias calibration.")
@click.option("--allow-inexact", is_flag=True,
              help="Convert even when ops between neurons (Sigmoid, LRN, ...) cannot be converted exactly.")
@click.option("--no-signed", is_flag=True,
              help="Convert LeakyRelu/PRelu as ReLU neurons, dropping the negative slope (inexact: needs "
                   "--allow-inexact; by default they become signed neurons).")
@click.option("--external-data", is_flag=True,
              help="Write the weights to OUTPUT.data (automatic above 2 GB).")
@search_options
@click.option("--portable", is_flag=True, help="Inline BurstIF into standard ops (no custom domain in the file).")
@click.option("--adaptive", is_flag=True,
              help="Choose an exit rule for adaptive timesteps on the calibration data and store it in the file "
                   "(eval --adaptive, StreamSession.run_adaptive; docs/stream.md).")
@click.option("--exit-tol", default=0.0, show_default=True, type=click.FloatRange(0, 100),
              help="--adaptive: points of agreement with the ANN the exits may lose against all T steps.")
@click.option("--exit-rule", type=click.Choice(["confidence", "margin", "step-margin"]), default="confidence",
              show_default=True,
              help="--adaptive: exit on the running mean's largest softmax probability, on its gap to the second, "
                   "or on that gap in the step's own output when it names the same class (docs/stream.md).")
@click.option("--exit-data", "exit_data", type=InputPath(exists=True), default=None, metavar="DATA",
              help="--adaptive: choose the rule on these inputs (labels not needed) instead of the calibration "
                   "samples: held-out data the model was not trained on, e.g. validation images, on which the "
                   "model is as unsure as on new inputs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def convert(model, output, per_timestep_output, no_bias_calibration, allow_inexact, external_data, portable, quiet,
            adaptive, exit_tol, exit_rule, exit_data, **kw):
    """Convert MODEL.onnx into a spiking network with burst spikes (BurstIF neurons).

    Each ReLU becomes a BurstIF neuron whose per-channel thresholds are fitted on the
    calibration data, the biases are calibrated layer by layer, and the output is the
    mean over T timesteps. The result runs in onnxruntime (with the onnx2burst kernel, or
    with its standard-op fallback anywhere).

    \b
    Example:
      onnx2burst convert models/zoo/vgg_fmnist.onnx --T 8 --psi 4 \\
          --calib models/data/fmnist_calib.npz -o vgg.snn.onnx
      onnx2burst convert models/zoo/resnet20_fmnist.onnx --T 8 --psi 4 \\
          --calib models/data/fmnist_calib.npz --bsr --ssc
    """
    import time

    with cli_errors(model):
        from onnx2burst.config import ConvertConfig
        from onnx2burst.convert import Converter
        from onnx2burst.io import check_output, save_model

        snn = build_snn(kw)
        source, calib = build_calibration(kw)
        search = build_search(kw)
        cfg = ConvertConfig(**snn, per_timestep_output=per_timestep_output, bias_calibration=not no_bias_calibration,
                            allow_inexact=allow_inexact, calibration=calib, signed=not kw.pop("no_signed"))
        out = output or model.with_name(model.name[:-5] + ".snn.onnx" if model.name.endswith(".onnx")
                                        else model.name + ".snn.onnx")
        if exit_data is not None and not adaptive:
            raise click.BadParameter("it chooses the exit rule of --adaptive; give --adaptive too",
                                     param_hint="--exit-data")
        inputs = {"the calibration data (--calib)": source,
                  "the guard data (--guard-data)": search.guard.data if search.guard else None,
                  "the exit data (--exit-data)": exit_data}
        out = check_output(out, model, sources=inputs)
        if external_data:
            check_output(out.with_name(out.name + ".data"), model, sources=inputs, option="-o's weights")
        progress = _progress(quiet)
        t0 = time.perf_counter()
        with progress.stage("analyse", 1) as st:
            conv = Converter(model, cfg)
            search = read_guard_early(search, conv)
            st.advance()
        if search.any:
            from onnx2burst.search import search_fits, tune

            data = conv.load_data(source)
            result = conv.run(data, progress, also_fit=search_fits(conv, search))
            tuned = tune(conv, data, search, snn=result.model, progress=progress)
            final = tuned.model
        else:
            result = conv.run(source, progress)
            final = result.model
        exit_summary = None
        if adaptive:
            from onnx2burst.evaluation.adaptive import attach_exit_rule

            exit_summary = attach_exit_rule(final, conv.canonical.model, conv.load_data(exit_data or source),
                                            tol=exit_tol, kind=exit_rule, threads=calib.threads, progress=progress)
        if portable:
            from onnx2burst.interop.portable import make_portable

            final = make_portable(final)
        with progress.stage("write", 1) as st:
            save_model(final, out, source=model, sources=inputs, external_data=True if external_data else None)
            st.advance()
        _summary(result, out, time.perf_counter() - t0)
        if exit_summary is not None:
            where = "exit" if exit_data else "calibration"
            click.echo(f"  adaptive    : {_exit_line(*exit_summary, T=result.snn.T, data=where)}")
        if search.any:
            chosen = ", ".join(f"{p}/{t:g}" for p, t in tuned.settings.values())
            click.echo(f"  psi/tau     : {chosen} (per neuron, in order; --bsr/--ssc)")
            sens = next(iter(tuned.measurements.values())).sensitivity
            click.echo(f"  sensitivity : {sens.summary()} (--sensitivity {search.sensitivity})")
            if tuned.guard is not None:
                click.echo(f"  SSC guard   : {tuned.guard.summary()}")
            for k, ck in tuned.checks.items():
                click.echo(f"  {k.upper()} check   : S {ck.before:.4g} -> {ck.measured:.4g} on the search samples "
                           f"(the per-layer tables predicted {ck.predicted:.4g})")


def _exit_line(rule, summary, *, T: int, data: str = "calibration") -> str:
    if rule is None:
        return summary  # why no rule applies
    return (f"{rule.describe()}; on the {summary['samples']} "
            f"{data} samples: {summary['mean_timesteps']:.2f} of {T} steps on average, agreement with the ANN "
            f"{100 * summary['agreement']:.1f} % (all {T} steps: {100 * summary['agreement_full_T']:.1f} %)")


def _progress(quiet: bool):
    from .options import RichProgress

    return RichProgress(enabled=not quiet)


def _summary(result, out, seconds) -> None:
    from rich.console import Console

    con = Console()
    a = result.analysis
    lo, hi = result.threshold_range
    calibrated = len(result.deltas)
    con.print(f"[bold green]converted[/] {len(a.neurons)} neuron layer(s) to BurstIF "
              f"(T={result.snn.T}, psi/tau per layer in the file's metadata)")
    con.print(f"  kept analog : {', '.join(n for n, _ in a.analog_layers) or 'none'}")
    con.print(f"  thresholds  : {lo:.4g} .. {hi:.4g} (tau*vth per spike)")
    con.print(f"  calibration : {result.samples} samples; bias calibrated for {calibrated} layer(s)")
    if a.maxpools:
        how = "pool by lateral inhibition" if a.maxpool == "lateral" else "run per timestep on spikes"
        con.print(f"  MaxPool     : {len(a.maxpools)} node(s) {how}")
    if a.inexact:
        con.print(f"  [yellow]inexact[/]     : {', '.join(f'{i.node} ({i.op_type})' for i in a.inexact)}")
    for n in result.notes:
        con.print(f"  note        : {n}")
    con.print(f"  time        : {seconds:.1f} s")
    con.print(f"  output      : {out}")
