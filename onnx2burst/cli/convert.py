"""``onnx2burst convert``: a ReLU ANN in ONNX -> a burst-spiking SNN in ONNX."""
from __future__ import annotations

from pathlib import Path

import click

from .options import build_calibration, build_snn, calibration_options, cli_errors, snn_options, ssc_rule_options


@click.command(name="convert")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@snn_options
@calibration_options(required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: MODEL.snn.onnx beside the input).")
@click.option("--per-timestep-output", is_flag=True,
              help="Add an output <name>_per_timestep [T, N, K] (any-time inference).")
@click.option("--no-bias-calibration", is_flag=True, help="Skip the layer-wise bias calibration.")
@click.option("--allow-inexact", is_flag=True,
              help="Convert even when ops between neurons (Sigmoid, LRN, ...) cannot be converted exactly.")
@click.option("--external-data", is_flag=True,
              help="Write the weights to OUTPUT.data (automatic above 2 GB).")
@click.option("--bsr", is_flag=True, help="Burst Spike Reallocation: per-layer psi under the energy of uniform --psi (§8).")
@click.option("--psi-max", type=click.IntRange(1, 64), default=8, show_default=True, help="Largest psi --bsr may choose.")
@click.option("--energy-ratio", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="--bsr energy budget as a multiple of uniform --psi's.")
@click.option("--ssc", is_flag=True, help="Sensitivity Spike Compression: per-layer tau under r x the sensitivity at tau=1 (§8).")
@click.option("--r", "r", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="--ssc sensitivity budget ratio.")
@ssc_rule_options
@click.option("--tau-grid", default="1:10:0.5", show_default=True,
              help="--ssc tau candidates: start:stop:step, a comma list, or both (1:3:0.1,3.5:10:0.5: finer near 1).")
@click.option("--energy", type=click.Choice(["spikes", "synops"]), default="spikes", show_default=True,
              help="Energy measure of the search.")
@click.option("--search-samples", type=click.IntRange(1), default=256, show_default=True,
              help="Calibration samples that measure sensitivities.")
@click.option("--portable", is_flag=True, help="Inline BurstIF into standard ops (no custom domain in the file).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def convert(model, output, per_timestep_output, no_bias_calibration, allow_inexact, external_data, bsr, psi_max,
            energy_ratio, ssc, r, ssc_z, ssc_folds, guard_data, guard_samples, guard_mode, guard_tol,
            guard_checks, guard_z, tau_grid, energy, search_samples,
            portable, quiet, **kw):
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

    with cli_errors():
        from onnx2burst.config import ConvertConfig
        from onnx2burst.convert import Converter
        from onnx2burst.io import check_output, save_model

        snn = build_snn(kw)
        source, calib = build_calibration(kw)
        cfg = ConvertConfig(**snn, per_timestep_output=per_timestep_output, bias_calibration=not no_bias_calibration,
                            allow_inexact=allow_inexact, calibration=calib)
        out = output or model.with_name(model.name[:-5] + ".snn.onnx" if model.name.endswith(".onnx")
                                        else model.name + ".snn.onnx")
        check_output(out, model)
        progress = _progress(quiet)
        t0 = time.perf_counter()
        with progress.stage("analyse", 1) as st:
            conv = Converter(model, cfg)
            st.advance()
        if bsr or ssc:
            from onnx2burst.tuning import search as S

            data = conv.load_data(source)
            result = conv.run(data, progress)
            tuned = S.tune(conv, data, bsr=bsr, ssc=ssc, snn=result.model, psi_max=psi_max, ratio=energy_ratio,
                           taus=S.parse_grid(tau_grid), r=r, ssc_z=ssc_z, ssc_folds=ssc_folds, energy=energy,
                           guard=guard_data, guard_samples=guard_samples, guard_z=guard_z,
                           guard_mode=guard_mode, guard_tol=guard_tol / 100, guard_checks=guard_checks,
                           samples=search_samples, progress=progress, show_progress=not quiet)
            final = tuned.model
        else:
            result = conv.run(source, progress)
            final = result.model
        if portable:
            from onnx2burst.interop.portable import make_portable

            final = make_portable(final)
        with progress.stage("write", 1) as st:
            save_model(final, out, source=model, external_data=True if external_data else None)
            st.advance()
        _summary(result, out, time.perf_counter() - t0)
        if bsr or ssc:
            chosen = ", ".join(f"{p}/{t:g}" for p, t in tuned.settings.values())
            click.echo(f"  psi/tau     : {chosen} (per neuron, in order; --bsr/--ssc)")
            if tuned.guard is not None:
                click.echo(f"  SSC guard   : {tuned.guard.summary()}")
            for k, ck in tuned.checks.items():
                click.echo(f"  {k.upper()} check   : S {ck.before:.4g} -> {ck.measured:.4g} on the search samples "
                           f"(the per-layer tables predicted {ck.predicted:.4g})")


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
