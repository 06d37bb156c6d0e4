"""``onnx2burst export-nir``: write an SNN ONNX file as a NIR graph (Neuromorphic Intermediate Representation)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("export-nir")
@click.argument("snn", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="NIR file to write (HDF5; default: SNN with .nir beside it).")
@click.option("--lossy", is_flag=True,
              help="Approximate what NIR cannot express (MaxPool -> SumPool2d, drop a Softmax after the mean) "
                   "instead of refusing; each approximation is listed.")
def export_nir(snn: Path, output: Path | None, lossy: bool):
    """Export an SNN ONNX file (BurstIF nodes, from `onnx2burst convert`) as a NIR graph.

    Each BurstIF becomes a NIR IF (threshold tau*vth per channel, r=1) followed by
    Scale(tau*vth); Conv/Gemm keep the calibrated weights and biases (plus the neuron's
    rounding offset theta/(2T) in the bias); AveragePool becomes AvgPool2d; a residual
    Add becomes two edges into the next node. The time expansion and the mean over T are
    not nodes: present the input at each of the T steps (metadata 'T') and average the
    output over them. NIR's IF resets to zero and spikes once per step, so the export
    is exact only up to that: the lost parts are printed per layer (docs/method.md §2).

    Needs the nir package: pip install 'onnx2burst[nir]'.

    \b
    Example:
      onnx2burst convert models/zoo/vgg_fmnist.onnx --T 8 --psi 1 \\
          --calib models/data/fmnist_calib.npz -o vgg.snn.onnx
      onnx2burst export-nir vgg.snn.onnx -o vgg.nir
      python -c "import nir; g = nir.read('vgg.nir'); print(len(g.nodes), g.metadata['T'])"
    """
    import warnings

    from onnx2burst.errors import Onnx2BurstError

    if not snn.is_file():
        raise click.ClickException(f"no such file: {snn}" if not snn.exists() else f"{snn} is not a file")
    if output is None:
        name = snn.name[:-5] if snn.name.endswith(".onnx") else snn.name
        output = snn.with_name(name + ".nir")
    try:
        from onnx2burst.interop.nir import NIRExportWarning, export_nir as _export

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NIRExportWarning)
            result = _export(snn, output, lossy=lossy)
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
