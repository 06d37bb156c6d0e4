"""Export an SNN ONNX file to NIR, the Neuromorphic Intermediate Representation (``nir``).

``to_nir(model)`` maps the graph written by ``onnx2burst convert`` (docs/method.md §1, §2)
onto NIR nodes; ``export_nir(snn, out)`` also writes the ``.nir`` (HDF5) file, atomically.
Needs the optional ``nir`` package: ``pip install 'onnx2burst[nir]'``. The neurons are read
with ``onnx2burst.snn.read_snn``; the graph walk is in ``nir_graph``, the per-op mappings in
``nir_layers``, the shared types in ``nir_common``.

Mapping (ONNX -> NIR; every NIR node carries ``metadata["onnx_node"]``):

- graph input ``[N, ...]``  -> ``Input`` of shape ``[...]`` (NIR shapes have no batch axis).
- ``Tile`` (time expansion, §1) -> nothing: NIR runs step by step; present the same input
  at each of the T steps (direct encoding). ``T`` is in the graph's metadata.
- ``Conv`` -> ``Conv1d``/``Conv2d``; ``Gemm`` -> ``Affine`` (``Linear`` without a bias);
  ``MatMul`` (+ ``Add`` of a constant) -> ``Linear`` (``Affine``). Weights and biases are the
  file's initializers (which already hold the bias calibration, §5), with one exact change:
  the rounding offset ``theta/(2T)`` that BurstIF adds at every step (§2) is added to the
  bias of the layer feeding the neuron (``metadata["rounding_offset"]`` says so; where no
  such layer feeds only that neuron, a depthwise 1x1 ``Conv`` / identity ``Affine`` carries it).
- ``BurstIF`` -> ``IF`` with ``r = 1``, ``v_threshold = theta = tau * vth`` (per channel,
  broadcast to the layer's shape), ``v_reset = 0``, followed by ``Scale(theta)``: NIR spikes
  are 1, ours carry ``theta``. Channels with ``theta <= 0`` (never fire, §2) get ``r = 0``,
  ``v_threshold = 1`` and scale 0. ``metadata``: psi, tau, T, vth, reset.
- ``AveragePool`` -> ``AvgPool2d`` (kernel, stride, padding; NIR's ``AvgPool2d`` divides by
  the kernel size, as ONNX with no padding or ``count_include_pad=1``);
  ``GlobalAveragePool`` -> ``AvgPool2d`` with the whole map as kernel.
- ``Flatten`` (axis 1) and a ``Reshape`` to ``[N, -1]`` -> ``Flatten(start_dim=0)``.
- ``Add`` of two branches -> fan-in: both branches get an edge into the next node (a NIR
  node sums its inputs). ``Identity``/``Dropout`` -> nothing.
- time unfold (``Reshape`` to ``[T, N, ...]``) and ``ReduceMean`` over axis 0 -> nothing;
  each graph output -> ``Output``; ``metadata["readout"]``: ``mean_over_T`` (average the
  Output over the T steps, the SNN's output) or ``per_timestep``.

Exact: weights, biases, thresholds, tau (only ``theta = tau*vth`` matters: it is both the
threshold and the weight of a spike), per-channel thresholds, silent channels, the rounding
offset, residual sums, average pooling, the input encoding. At ``psi = 1`` a simulation of
the NIR graph whose IF resets by subtraction reproduces the SNN up to float rounding (the
offset is summed in another order, so a membrane within an ulp of the threshold may fire a
step apart).

Lost (NIR's ``IF`` has binary spikes and a reset *to* ``v_reset``), listed per layer in a
``NIRExportWarning``:

- reset by subtraction (§2: ``u = u - s*theta``) becomes reset to zero: the charge above the
  threshold at a spike is dropped, so rates come out lower than the SNN's, and the error
  compounds with depth;
- ``psi > 1``: at most one spike per step, so a neuron's output saturates at ``theta`` per
  step instead of ``psi*theta``;
- (negligible) the comparison: BurstIF fires at ``u >= theta``, NIR's ``IF`` at ``v > theta``.

Not mapped (``NIRUnsupportedError``, an ``UnsupportedModelError`` naming each node, unless
``lossy=True``): MaxPool, Concat, Softmax/LogSoftmax after the mean, and any other op.
With ``lossy``, MaxPool becomes ``SumPool2d`` (the max of binary spikes in a window equals
their sum while at most one fires), and a Softmax after the mean is dropped (apply it to the
averaged output); Concat stays an error.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import onnx

from .nir_common import SUPPORTED_OPS, NIRExport, NIRExportWarning, NIRUnsupportedError, _nir
from .nir_graph import _Builder

__all__ = ["NIRExport", "NIRExportWarning", "NIRUnsupportedError", "to_nir", "export_nir", "SUPPORTED_OPS"]


def to_nir(model: onnx.ModelProto, *, lossy: bool = False) -> NIRExport:
    """Map an SNN ModelProto (with BurstIF nodes) onto a ``nir.NIRGraph``; see the module docstring.

    Raises ``GraphError`` for a model that is not an SNN and ``UnsupportedModelError``
    (naming each node) for ops NIR cannot express, unless ``lossy`` (then MaxPool becomes
    SumPool2d and a Softmax after the mean is dropped; ``approximations`` lists them).
    Does not warn: ``export_nir`` does, or use ``result.losses``.
    """
    b = _Builder(model, lossy)
    graph = b.build()
    return NIRExport(graph=graph, T=b.T, losses=b.losses, approximations=b.approx)


def export_nir(snn: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike, *, lossy: bool = False,
               warn: bool = True) -> NIRExport:
    """Write the NIR graph of an SNN ONNX file (path or ModelProto) to ``output`` (HDF5, atomically).

    Emits one ``NIRExportWarning`` listing, per layer, what NIR loses (``warn=False``: none;
    the result's ``losses``/``approximations`` hold the same). Example::

        from onnx2burst.interop.nir import export_nir
        export_nir("vgg.snn.onnx", "vgg.nir")
        import nir; g = nir.read("vgg.nir")
    """
    from ..io import check_output, load_model, write_file

    source = None
    if not isinstance(snn, onnx.ModelProto):
        source = Path(snn)
        check_output(output, source)
        snn = load_model(source)
    else:
        check_output(output)
    result = to_nir(snn, lossy=lossy)
    nir = _nir()
    buf = io.BytesIO()
    nir.write(buf, result.graph)
    write_file(output, buf.getvalue(), source=source)
    if warn and not result.exact:
        warnings.warn(result.message(str(source) if source else "the SNN"), NIRExportWarning, stacklevel=2)
    return result
