"""``export_stream``: the streaming model of an SNN, its state shapes, checked against the SNN.

The state shapes (per sample) come from one run of the SNN at batch 1 on a probe input;
the streaming model is then stepped T times on a probe batch and its last outputs are
compared with the SNN's, bit for bit, before anything is returned (docs/stream.md).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
from onnx import helper

from ..errors import ConfigError, GraphError, onnxruntime_errors
from ..snn import METADATA_PREFIX, read_snn
from .build import SHARED_KINDS, build_stream, stream_info

__all__ = ["export_stream", "probe_feeds", "stream_info"]


def probe_feeds(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Normal float32 inputs of every data input at ``batch`` (static dims required)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims = list(t.shape.dim)[1:]
        if any(not d.HasField("dim_value") for d in dims):
            raise ConfigError(f"input {i.name!r} has a dimension other than the batch that is not fixed; the "
                              "streaming export needs its shape")
        if t.elem_type != onnx.TensorProto.FLOAT:
            raise ConfigError(f"input {i.name!r} is not float32")
        feeds[i.name] = rng.normal(size=[batch] + [d.dim_value for d in dims]).astype(np.float32)
    return feeds


def _plain_session(model: onnx.ModelProto, kernel: bool | None = False):
    from ..ops import make_session

    return make_session(model, kernel=kernel, threads=1, layout="plain")


def _neuron_ranks(snn: onnx.ModelProto) -> dict[str, int]:
    """The rank of each neuron's input, from one run of the SNN at batch 1 on a probe input."""
    m = onnx.ModelProto()
    m.CopyFrom(snn)
    have = {o.name for o in m.graph.output}
    names = list(dict.fromkeys(n.x for n in read_snn(snn).neurons))
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    with onnxruntime_errors("the SNN on a probe input (batch 1)"):
        outs = _plain_session(m, kernel=None).run(names, probe_feeds(snn, 1))
    return {n: o.ndim for n, o in zip(names, outs)}


def _state_shapes(snn: onnx.ModelProto, info: dict) -> None:
    """Fill each state's per-sample ``shape`` from one run of the SNN at batch 1."""
    m = onnx.ModelProto()
    m.CopyFrom(snn)
    have = {o.name for o in m.graph.output}
    wanted = [s["of"] for s in info["states"] if s["of"] and s["of"] not in have]
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(wanted))
    names = [s["of"] for s in info["states"] if s["of"]]
    with onnxruntime_errors("the SNN on a probe input (batch 1)"):
        outs = dict(zip(names, _plain_session(m, kernel=None).run(names, probe_feeds(snn, 1))))
    T = info["T"]
    for s in info["states"]:
        if s["view"] == "scalar":
            s["shape"] = []
            continue
        if s["view"] == "shared":  # the same for every sample: its shape is known
            continue
        shape = list(outs[s["of"]].shape)
        if not shape or shape[0] != T:
            raise GraphError(f"tensor {s['of']!r} has shape {shape}; a time-folded tensor at batch 1 has T={T} rows")
        rest = shape[1:]
        s["shape"] = [rest[0], int(np.prod(rest[1:], dtype=np.int64))] if s["view"] == "NCK" else rest


def _check_against_snn(snn: onnx.ModelProto, stream: onnx.ModelProto, info: dict, batch: int = 2) -> None:
    """Step the streaming model T times on a probe batch: its outputs must equal the SNN's bit for bit."""
    from .session import StreamSession

    feeds = probe_feeds(snn, batch, seed=1)
    outs = [o["name"] for o in info["outputs"]]
    with onnxruntime_errors("the SNN on a probe input"):
        want = _plain_session(snn, kernel=None).run(outs, feeds)
    s = StreamSession(stream, threads=1)
    s.reset(batch)
    for _ in range(info["T"]):
        s.step(feeds)
    for name, w, g in zip(outs, want, s.prediction()):
        if w.shape != g.shape or not np.array_equal(w, g, equal_nan=True):
            diff = float(np.nanmax(np.abs(w - g))) if w.shape == g.shape else float("nan")
            raise GraphError(f"output {name!r}: the streaming model after T={info['T']} steps differs from the SNN "
                             f"on a probe input (largest difference {diff:.3g}); the SNN holds an op over time "
                             "that the streaming export does not know")


def _declare_shapes(stream: onnx.ModelProto, info: dict) -> None:
    """Typed inputs and outputs: states ``[N, ...]`` (the step count a scalar), outputs float32."""
    shapes = {}
    for st in info["states"]:
        shape = list(st["shape"]) if st["kind"] in SHARED_KINDS else ["N"] + list(st["shape"])
        shapes[st["in"]] = shapes[st["out"]] = shape
    for vi in list(stream.graph.input) + list(stream.graph.output):
        if vi.name in shapes:
            vi.CopyFrom(helper.make_tensor_value_info(vi.name, onnx.TensorProto.FLOAT, shapes[vi.name]))
    try:
        inferred = onnx.shape_inference.infer_shapes(stream, data_prop=True).graph
        known = {v.name: v for v in list(inferred.value_info) + list(inferred.output)}
    except Exception:  # noqa: BLE001 - outputs then stay untyped beyond float32
        known = {}
    for vi in stream.graph.output:
        if vi.name in shapes:
            continue
        got = known.get(vi.name)
        if got is not None and got.type.tensor_type.HasField("shape"):
            vi.CopyFrom(got)


def export_stream(snn: onnx.ModelProto, *, check: bool = True) -> onnx.ModelProto:
    """The streaming model of ``snn`` (a ModelProto ``onnx2burst convert`` wrote, or its portable form).

    Its metadata keeps the SNN's ``onnx2burst.*`` keys and adds ``onnx2burst.stream``: T, the
    data inputs, per output its any-time prediction, its step value and its head, the
    spike-count output of each layer, and each state (name in, name out, kind, layer, shape
    per sample). check: compare with the SNN on a probe input (``GraphError`` on a difference).
    """
    from ..interop.portable import fold_back

    if stream_info(snn) is not None:
        raise GraphError("the model is a streaming model already (made by export-stream); pass the SNN "
                         "`onnx2burst convert` wrote")
    snn = fold_back(snn)  # a portable file: back to its BurstIF nodes
    stream, info = build_stream(snn, _neuron_ranks(snn))
    _state_shapes(snn, info)
    _declare_shapes(stream, info)
    for s in info["states"]:
        s.pop("of", None)
        s.pop("view", None)
    info["id"] = hashlib.sha256(stream.graph.SerializeToString(deterministic=True)).hexdigest()[:16]
    view = read_snn(snn)
    keep = [p for p in stream.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del stream.metadata_props[:]
    stream.metadata_props.extend(keep)
    for k, v in list(view.metadata.items()) + [("stream", json.dumps(info))]:
        p = stream.metadata_props.add()
        p.key, p.value = METADATA_PREFIX + k, v
    if check:
        _check_against_snn(snn, stream, info)
    return stream
