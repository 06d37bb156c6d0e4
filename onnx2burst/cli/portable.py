"""``onnx2burst portable``: inline the BurstIF functions so that only standard ops remain."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("snn", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="output file (default: SNN with .portable.onnx beside it); never the input")
def portable(snn: Path, output: str | None):
    """Write a copy of an SNN file with every BurstIF inlined into standard ONNX ops.

    The result runs on any ONNX runtime (no custom domain, no library to register) and gives
    the same outputs as the C++ kernel, bit for bit; it is slower than the kernel.

    \b
    Example:
      onnx2burst portable model.snn.onnx -o model.portable.onnx
    """
    from onnx2burst.errors import Onnx2BurstError
    from onnx2burst.interop.portable import make_portable
    from onnx2burst.io import check_output, load_model, save_model

    if output is None:
        name = snn.name[:-5] if snn.name.endswith(".onnx") else snn.name
        output = snn.with_name(name + ".portable.onnx")
    try:
        output = check_output(output, snn)  # before reading anything
        model = load_model(snn)
        out = make_portable(model)
        save_model(out, output, source=snn)
    except (Onnx2BurstError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    n = sum(1 for _ in out.graph.node)
    click.echo(f"wrote {output} ({n} nodes, standard ops only)")
