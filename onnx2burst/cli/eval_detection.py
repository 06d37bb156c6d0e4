"""``onnx2burst eval --task detection``: a detector against its SNN in mAP (docs/detection.md)."""
from __future__ import annotations

import json


def detection_command(ann, snn, data, *, batch_size, limit, threads, kernel, e_ac, e_mac, as_json, other_ann,
                      figure=None) -> None:
    """``onnx2burst eval --task detection``: the table (or JSON) and the optional figure."""
    import click

    from onnx2burst.evaluation.detection import detection_figure, detection_table, evaluate_detection
    from onnx2burst.io import check_output

    from .options import RichProgress, cli_errors

    try:
        with cli_errors():
            if figure:
                check_output(figure, sources={"ANN": ann, "SNN": snn, "--data": data}, option="--figure")
            r = evaluate_detection(ann, snn, data, batch_size=min(batch_size, 256), threads=threads, kernel=kernel,
                                   limit=limit, e_ac_pj=e_ac, e_mac_pj=e_mac, other_ann=other_ann,
                                   progress=RichProgress(enabled=not as_json))
            if figure:
                r["figure"] = detection_figure(ann, snn, data, figure)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    from rich.console import Console
    con = Console()
    con.print(detection_table(r))
    for n in r["notes"]:
        con.print(f"[yellow]note:[/] {n}")
    if figure:
        con.print(f"figure: {figure}")
