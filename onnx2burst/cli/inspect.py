"""``onnx2burst inspect``: what the converter would make of a model, without converting it."""
from __future__ import annotations

from pathlib import Path

import click

from .options import cli_errors


@click.command(name="inspect")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--maxpool", type=click.Choice(["lateral", "spikes", "avg"]), default="lateral", show_default=True,
              help="MaxPool handling to analyse.")
def inspect(model, maxpool):
    """Show the neurons, analog layers, MaxPool handling, opset and the ops that cannot
    be converted exactly (by node name) of MODEL.onnx. Reads no data.

    \b
    Example:
      onnx2burst inspect models/zoo/resnet20_fmnist.onnx
    """
    with cli_errors(model):
        from rich.console import Console
        from rich.table import Table

        from onnx2burst.graph import canonicalize
        from onnx2burst.io import load_model
        from onnx2burst.rewrite import analyze

        canonical = canonicalize(load_model(model), maxpool=maxpool)
        a = analyze(canonical, maxpool)
        con = Console()
        t = Table(title=f"{model.name}: {len(a.neurons)} neuron layer(s), opset {a.opset}")
        for col in ("#", "node", "becomes", "op", "C", "bias corrected on / note"):
            t.add_column(col, overflow="fold")
        for k, n in enumerate(a.neurons):
            op = n.op_type + (f" (max {n.clip_max:g})" if n.clip_max is not None else "")
            if n.alpha is not None:
                op += f" (signed, slope {n.alpha[0]:g})" if len(n.alpha) == 1 else f" (signed, {len(n.alpha)} slopes)"
            t.add_row(str(k), n.name, "BurstIF", op,
                      str(n.channels) + ("" if n.per_channel else " (one threshold)") if n.channels else "?",
                      n.layer or "[yellow]none found[/]")
        for name, op in a.analog_layers:
            t.add_row("", name, "analog", op, "", "")
        for name in a.maxpools:
            if a.maxpool == "lateral":
                t.add_row("", name, "lateral", "MaxPool", "", "passes the input with the most spikes so far")
            else:
                t.add_row("", name, "per timestep", "MaxPool", "", "max of spike maps, not of rates")
        for name in a.output_tail:
            t.add_row("", name, "after mean", "", "", "moved after the mean over T")
        for name in a.analog_tail:
            t.add_row("", name, "after mean", "", "", "after the last neuron: runs once on the mean over T")
        for i in a.inexact:
            t.add_row("", i.node, "[red]not exact[/]", i.op_type, "", i.reason)
        for i in a.shape_issues + a.unsupported:
            t.add_row("", i.node, "[red]unsupported[/]", i.op_type, "", i.reason)
        con.print(t)
        con.print(f"time starts (Tile x T) at: {', '.join(a.expansion) or '-'}")
        con.print(f"MaxPool handling: {maxpool if a.maxpools or maxpool == 'avg' else 'no MaxPool'}")
        for note in a.notes:
            con.print(f"note: {note}")
        if a.inexact:
            con.print(f"[red]{len(a.inexact)} op(s) cannot be converted exactly[/]: "
                      "convert fails unless --allow-inexact")
