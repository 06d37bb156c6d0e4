"""``onnx2burst export-torch``: write a TorchScript artifact of an SNN ONNX file."""
from __future__ import annotations

import os

import click


@click.command("export-torch")
@click.argument("snn", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="TorchScript file to write (.pt).")
def export_torch(snn, output):
    """Export an SNN ONNX file (with BurstIF nodes) as a TorchScript module.

    The module runs the graph with torch ops (BurstIF bit-exact to the reference)
    and loads with ``torch.jit.load``; it runs on CPU or, after ``.to('cuda')``, on GPU.

    \b
    Example:
      onnx2burst export-torch model.snn.onnx -o model.pt
      python -c "import torch; m = torch.jit.load('model.pt'); print(m(torch.zeros(1, 1, 28, 28)))"
    """
    if not os.path.isfile(snn):
        raise click.ClickException(f"no such file: {snn}")
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise click.ClickException(f"output folder does not exist: {out_dir}")
    try:
        from onnx2burst.interop.torch import export
        export(snn, output)
    except click.ClickException:
        raise
    except Exception as e:  # noqa: BLE001
        raise click.ClickException(f"export-torch failed for {snn}: {e}") from e
    click.echo(f"wrote {output}")
