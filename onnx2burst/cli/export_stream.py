"""``onnx2burst export-stream``: the streaming form of an SNN, one timestep per run."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("export-stream")
@click.argument("snn", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Streaming model to write (default: SNN with .stream.onnx beside it); never the input.")
def export_stream(snn: Path, output: str | None):
    """Write the streaming form of an SNN (from `onnx2burst convert`): a model that runs one
    timestep per call.

    Its inputs are this step's model inputs and the state (each neuron's membrane, each
    lateral pool's running sums, each output's running sum and the step count); its outputs
    are the any-time prediction after this step (the mean of the steps so far, the head
    applied), this step's own output (<name>.step), each layer's spikes of the step and the
    next state. Stepping T times over the same input gives the SNN's output bit for bit
    (checked on a probe input before writing). It holds standard ops only. An exit rule stored
    by `convert --adaptive` is kept (docs/stream.md).

    \b
    Example:
      onnx2burst convert models/zoo/vgg_fmnist.onnx --T 8 --psi 4 --adaptive \\
          --calib models/data/fmnist_calib.npz -o vgg.snn.onnx
      onnx2burst export-stream vgg.snn.onnx -o vgg.stream.onnx
      python -c "from onnx2burst.stream import StreamSession; import numpy as np; \\
          s = StreamSession('vgg.stream.onnx'); s.reset(1); print(s.step({'input': np.zeros((1, 1, 28, 28), 'f')}))"
    """
    from .options import cli_errors

    if not snn.is_file():
        raise click.ClickException(f"no such file: {snn}" if not snn.exists() else f"{snn} is not a file")
    if output is None:
        name = snn.name[:-5] if snn.name.endswith(".onnx") else snn.name
        name = name[:-4] if name.endswith(".snn") else name
        output = snn.with_name(name + ".stream.onnx")
    with cli_errors(snn):
        from onnx2burst.errors import onnxruntime_errors
        from onnx2burst.io import check_output, load_model, save_model
        from onnx2burst.stream import export_stream as _export

        out = check_output(output, snn)
        model = load_model(snn)
        with onnxruntime_errors(str(snn)):
            stream = _export(model)
        save_model(stream, out, source=snn)
    states = sum(1 for i in stream.graph.input if i.name not in {t.name for t in stream.graph.initializer}) - 1
    click.echo(f"wrote {out} (one timestep per run; {states} state tensor(s); checked against {snn.name} "
               "over T steps on a probe input)")
