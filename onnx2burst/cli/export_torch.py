"""``onnx2burst export-torch``: write a TorchScript artifact of an SNN ONNX file."""
from __future__ import annotations

import click


@click.command("export-torch")
@click.argument("snn", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="TorchScript file to write (.pt); never the input.")
def export_torch(snn, output):
    """Export an SNN ONNX file (with BurstIF nodes) as a TorchScript module.

    The module runs the graph with torch ops (BurstIF bit-exact to the reference)
    and loads with ``torch.jit.load``; it runs on CPU or, after ``.to('cuda')``, on GPU.

    \b
    Example:
      onnx2burst export-torch model.snn.onnx -o model.pt
      python -c "import torch; m = torch.jit.load('model.pt'); print(m(torch.zeros(1, 1, 28, 28)))"
    """
    from onnx2burst.errors import Onnx2BurstError
    from onnx2burst.io import check_output, load_model

    try:
        out = check_output(output, snn)  # before torch is imported or anything read
        model = load_model(snn)  # a clear message for a missing, odd or broken file
        from onnx2burst.interop.torch import export
        export(model, out)
    except Onnx2BurstError as e:
        raise click.ClickException(str(e)) from None
    except ImportError as e:
        raise click.ClickException(f"export-torch needs PyTorch (pip install 'onnx2burst[torch]'): {e}") from None
    except Exception as e:  # noqa: BLE001 - torch's own errors: one line, naming the file
        first = (str(e).strip().splitlines() or [""])[0]
        raise click.ClickException(f"export-torch failed for {snn}: {type(e).__name__}: {first}") from None
    click.echo(f"wrote {output}")
