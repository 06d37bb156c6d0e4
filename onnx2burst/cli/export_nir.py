"""``onnx2burst export-nir``: write an SNN ONNX file as a NIR graph (Neuromorphic Intermediate Representation)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("export-nir")
@click.argument("snn", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="NIR file to write (HDF5; default: SNN with .nir beside it).")
@click.option("--lossy", is_flag=True,
              help="Approximate what NIR cannot express (MaxPool -> SumPool2d, drop a Softmax after the mean) "
                   "instead of refusing; each approximation is listed.")
@click.option("--neuron", type=click.Choice(["if", "cubalif"]), default="if", show_default=True,
              help="NIR neuron of each BurstIF: 'if' (Sinabs and Norse import it) or 'cubalif' (an IF as a CubaLIF, "
                   "for norse.torch.from_nir(g, reset_method=reset_subtract): Norse then resets by subtraction; "
                   "Sinabs cannot import it).")
def export_nir(snn: Path, output: str | None, lossy: bool, neuron: str):
    """Export an SNN ONNX file (BurstIF nodes, from `onnx2burst convert`) as a NIR graph
    that Sinabs (sinabs.from_nir) and Norse (norse.torch.from_nir) import and run.

    Each BurstIF becomes a NIR IF of threshold tau*vth per channel; the spike weight tau*vth
    is multiplied into the next layer's weights and the rounding offset theta/(2T) into the
    bias before it. Conv and Gemm become Conv2d and Affine (Flatten -> Gemm: a Conv2d over the
    whole map; the Output is then [K, 1, 1]); average pools become SumPool2d; a residual Add
    becomes two edges into the next IF (a 1x1-conv shortcut: extra channels that carry the
    spikes through the block). The time expansion and the mean over T are not nodes: present
    the input at each of the T steps (metadata 'T') and average the output over them. What an
    importer runs differently is printed per layer (Sinabs: no cap at psi, membrane floored at
    -threshold; Norse and NIR's IF: reset to zero; docs/method.md §2).

    Needs the nir package: pip install 'onnx2burst[nir]' (nir 1.0.4 to 1.0.8).

    \b
    Example:
      onnx2burst convert models/zoo/vgg_fmnist.onnx --T 32 --psi 1 --maxpool spikes \\
          --calib models/data/fmnist_calib.npz -o vgg.snn.onnx
      onnx2burst export-nir vgg.snn.onnx -o vgg.nir
      python -c "import nir, sinabs; g = nir.read('vgg.nir'); print(sinabs.from_nir(g, num_timesteps=32))"
    """
    import warnings

    from onnx2burst.errors import Onnx2BurstError

    if not snn.is_file():
        raise click.ClickException(f"no such file: {snn}" if not snn.exists() else f"{snn} is not a file")
    if output is None:
        name = snn.name[:-5] if snn.name.endswith(".onnx") else snn.name
        output = snn.with_name(name + ".nir")
    try:
        from onnx2burst.io import check_output

        output = check_output(output, snn)   # as typed: "newdir/" names a folder, not a file
        from onnx2burst.interop.nir import NIRExportWarning, export_nir as _export

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NIRExportWarning)
            result = _export(snn, output, lossy=lossy, neuron=neuron)
    except Onnx2BurstError as e:
        raise click.ClickException(str(e)) from None
    for w in caught:
        if issubclass(w.category, NIRExportWarning):
            click.secho(f"warning: {w.message}", fg="yellow", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    g = result.graph
    click.echo(f"wrote {output} ({len(g.nodes)} nodes, {len(g.edges)} edges; T={result.T}: present the input "
               f"at each of {result.T} steps and average the output)")
