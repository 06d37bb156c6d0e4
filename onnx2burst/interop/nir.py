"""Export an SNN ONNX file to NIR, the Neuromorphic Intermediate Representation (``nir``), in a
form that the released importers run: Sinabs (``sinabs.from_nir``) and Norse
(``norse.torch.from_nir``), both through ``nirtorch``.

``to_nir(model)`` maps the graph written by ``onnx2burst convert`` (docs/method.md §1, §2)
onto NIR nodes; ``export_nir(snn, out)`` also writes the ``.nir`` (HDF5) file, atomically.
Needs the optional ``nir`` package (1.0.4 to 1.0.8): ``pip install 'onnx2burst[nir]'``. The
graph walk is in ``nir_graph``, the per-op mappings in ``nir_layers``, the rewrite into what the
importers run in ``nir_lower``, the file in ``nir_io``.

The exported graph has only Input, Conv2d, Affine, IF, SumPool2d and Output nodes (Conv1d and
Flatten where a model needs them), which both importers know:

- graph input ``[N, ...]`` -> ``Input`` of shape ``[...]`` (NIR shapes have no batch axis); the
  ``Tile`` of the time expansion (§1) -> nothing: present the same input at each of the T
  steps (graph metadata ``T``).
- ``BurstIF`` -> ``IF`` of threshold ``theta = tau*vth`` (per channel, ``r = 1``); its spikes
  weigh ``theta`` in the SNN and 1 in NIR, so ``theta`` is multiplied into the input channels of
  the next Conv/Affine. Its rounding offset ``theta/(2T)`` per step is added to the bias of the
  layer feeding it. A channel with ``theta <= 0`` (never fires, §2) gets threshold 1e30.
- ``Conv`` -> ``Conv2d``/``Conv1d``, ``Gemm``/``MatMul`` -> ``Affine``: the file's weights and
  (calibrated) biases, times those factors. ``Flatten -> Gemm`` -> a ``Conv2d`` whose kernel is
  the whole map, and the layers after it 1x1 convs: the Output then has shape ``[K, 1, 1]``
  (Norse's Flatten would flatten the batch axis too).
- ``AveragePool``/``GlobalAveragePool`` -> ``SumPool2d``, its ``1/k`` in the next layer's
  weights (a padded one: a diagonal Conv2d).
- residual ``Add``: an identity shortcut is an edge from the earlier IF into the later one
  (which sums its inputs); since those spikes arrive unweighted, the later IF's other input and
  threshold are divided by the earlier IF's ``theta``. A 1x1-conv shortcut becomes extra
  channels of the block's first conv and IF that copy the earlier spikes to its second conv,
  which applies the shortcut's weights (nirtorch runs the nodes in depth-first order and would
  run the block's output before a branch of it).
- ``ReduceMean`` over T and the time unfold -> nothing: average each Output over the T steps
  (graph metadata ``readout``).

Each node's origin is in the graph's metadata ``nodes`` (JSON: ``onnx_node``, its role); IF
nodes also carry psi, tau, T and vth. Exact, up to float rounding: weights, biases, thresholds
(per channel, silent channels), the rounding offset, pooling, residual sums, the input
encoding. What an importer loses (a ``NIRExportWarning`` lists it per layer):

- Sinabs (``IAFSqueeze``, reset by subtraction like BurstIF): ``MultiSpike``, ``floor(v/threshold)``
  spikes a step with no cap at psi (BurstIF keeps the excess in the membrane for later steps),
  and the membrane floored at ``-threshold`` (BurstIF's may go lower).
  ``nir_run.sinabs_as_burstif`` (``MaxSpike(psi)``, no floor) makes it compute BurstIF.
- Norse (``IAFCell``) and NIR's own IF semantics: reset to zero, not by subtraction (the charge
  above the threshold at a spike is lost, rates come out lower, the error grows with depth);
  one spike per step; firing at ``v > threshold`` where BurstIF fires at ``>=``.

For Norse, ``neuron="cubalif"`` (``export-nir --neuron cubalif``) writes each IF as a CubaLIF that
integrates like it under Euler steps of 1 ms (``tau_syn = dt``: the synaptic current is each
step's input; ``tau_mem = 1e9*dt``, ``r = tau_mem/dt``: no leak float32 can see): imported with
``norse.torch.from_nir(g, reset_method=reset_subtract, dt=1e-3)`` it resets by subtraction like
BurstIF (one spike a step, firing at ``>``). Sinabs does not import CubaLIF (it drops the node).

Not mapped (``NIRUnsupportedError``, an ``UnsupportedModelError`` naming each node, unless
``lossy=True``): MaxPool, Concat, Softmax/LogSoftmax after the mean, and any other op.
With ``lossy``, MaxPool becomes ``SumPool2d`` (the max of binary spikes in a window equals
their sum while at most one fires), and a Softmax after the mean is dropped (apply it to the
averaged output); Concat stays an error.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import onnx

from ..errors import ConfigError
from .nir_common import SUPPORTED_OPS, NIRExport, NIRExportWarning, NIRUnsupportedError
from .nir_graph import _Builder
from .nir_io import NEURONS, graph_dict, read_bytes, write_bytes
from .nir_lower import lower
from .portable import fold_back

__all__ = ["NIRExport", "NIRExportWarning", "NIRUnsupportedError", "to_nir", "export_nir", "SUPPORTED_OPS"]


def to_nir(model: onnx.ModelProto, *, lossy: bool = False, neuron: str = "if") -> NIRExport:
    """Map an SNN ModelProto (with BurstIF nodes) onto a ``nir.NIRGraph``; see the module docstring.

    Raises ``GraphError`` for a model that is not an SNN and ``UnsupportedModelError``
    (naming each node) for ops NIR cannot express, unless ``lossy`` (then MaxPool becomes
    SumPool2d and a Softmax after the mean is dropped; ``approximations`` lists them).
    ``neuron="cubalif"``: each IF as a CubaLIF that integrates like it (``nir_io.node_dict``), for
    Norse's ``from_nir(g, reset_method=reset_subtract)``; Sinabs does not import CubaLIF.
    Does not warn: ``export_nir`` does, or use ``result.losses``. ``result.data`` holds the file's bytes.
    """
    if neuron not in NEURONS:
        raise ConfigError(f"neuron must be one of {', '.join(NEURONS)}, not {neuron!r}")
    b = _Builder(fold_back(model), lossy)   # a portable file: its BurstIF nodes back
    meta = b.build()
    notes = lower(b.nodes, b.edges, b.T)
    losses = b.losses
    if neuron == "cubalif":      # Norse's reset_subtract keeps the subtraction; one spike a step stays
        losses = [(layer, f"psi={b.burst[layer].psi}: Norse's CubaLIF spikes once a step, output at most theta a "
                   "step") for layer, _ in b.losses if b.burst[layer].psi > 1]
    data = write_bytes(graph_dict(b.nodes, b.edges, meta, neuron))
    graph, more = read_bytes(data)
    return NIRExport(graph=graph, T=b.T, losses=losses, approximations=b.approx, notes=notes + more, data=data,
                     neuron=neuron)


def export_nir(snn: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike, *, lossy: bool = False,
               neuron: str = "if", warn: bool = True) -> NIRExport:
    """Write the NIR graph of an SNN ONNX file (path or ModelProto) to ``output`` (HDF5, atomically).

    Emits one ``NIRExportWarning`` listing, per layer, what NIR loses (``warn=False``: none;
    the result's ``losses``/``approximations``/``notes`` hold the same). ``neuron``: see ``to_nir``.
    Example::

        from onnx2burst.interop.nir import export_nir
        export_nir("vgg.snn.onnx", "vgg.nir")
        import nir; g = nir.read("vgg.nir")
        import sinabs; net = sinabs.from_nir(g, num_timesteps=int(g.metadata["T"]))   # or norse.torch.from_nir(g)
    """
    from ..io import check_output, load_model, write_file

    source = None
    if not isinstance(snn, onnx.ModelProto):
        source = Path(snn)
        check_output(output, source)
        snn = load_model(source)
    else:
        check_output(output)
    result = to_nir(snn, lossy=lossy, neuron=neuron)
    write_file(output, result.data, source=source)
    if warn and not result.exact:
        warnings.warn(result.message(str(source) if source else "the SNN"), NIRExportWarning, stacklevel=2)
    return result
