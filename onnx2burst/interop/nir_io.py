"""The NIR file the exporter writes, and the ``nir`` objects read back from it.

The file is written here with h5py, in the layout ``nir.write`` uses, restricted to what every
``nir`` from 1.0.4 (the newest that Sinabs 3.1 accepts) to 1.0.8 reads: no ``v_reset`` on IF
(1.0.4's IF has none; later versions read it as 0, NIR's reset), and node metadata only on the
types whose 1.0.4 class takes it (IF, Affine, SumPool2d, Conv1d, Flatten). What each node is
(the ONNX node it came from, its role) is also in the graph's metadata ``nodes`` (JSON), for
every node. ``to_nir`` returns the graph as ``nir.read`` gives it back from these bytes.
"""
from __future__ import annotations

import io
import json

import numpy as np

from .nir_common import _N, _nir

NEVER = np.float32(1e30)     # the threshold of a channel that never fires (theta <= 0)
_META_TYPES = ("IF", "CubaLIF", "Affine", "SumPool2d", "Conv1d", "Flatten")
NEURONS = ("if", "cubalif")
DT = 1e-3                    # the step a CubaLIF export is made for (Norse's default dt)
_SLOW = 1e9                  # tau_mem / dt of a CubaLIF export: a leak of 1e-9 a step, below float32's reach
FORMAT = "NIR (HDF5) as written by nir 1.0.4, read by nir 1.0.4 to 1.0.8"


def _full(v: np.ndarray, shape: tuple) -> np.ndarray:
    """Per-channel ``v`` [C] broadcast to ``shape`` (C, ...)."""
    v = np.asarray(v, np.float32).reshape((-1,) + (1,) * (len(shape) - 1))
    return np.ascontiguousarray(np.broadcast_to(v, shape), np.float32)


def _meta_value(v):
    """``v`` as something h5py stores and ``nir`` reads back (None: leave it out)."""
    if isinstance(v, (bool, np.bool_)):
        return np.bool_(v)
    if isinstance(v, (int, np.integer)):
        return np.int64(v)
    if isinstance(v, (float, np.floating)):
        return np.float64(v)
    if isinstance(v, str):
        return v
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, (list, tuple)):
        return json.dumps(list(v))
    return None


def _meta(meta: dict) -> dict:
    return {str(k): mv for k, v in meta.items() if (mv := _meta_value(v)) is not None}


def node_dict(n: _N, neuron: str = "if") -> dict:
    """The dictionary ``nir`` serialises for node ``n`` (its ``type`` and fields). ``neuron="cubalif"``:
    each IF as a ``CubaLIF`` that integrates like it under Euler steps of ``DT`` (``tau_syn = DT``:
    the synaptic current is each step's input; ``tau_mem = 1e9*DT``, ``r = tau_mem/DT``: no leak
    that float32 can see), for ``norse.torch.from_nir(g, reset_method=reset_subtract)``."""
    k, p = n.kind, n.p
    if k in ("Input", "Output"):
        return {"type": k, "shape": np.asarray(n.shape, np.int64)}
    if k == "Conv":
        w = p["weight"]
        if w.ndim == 4:
            return {"type": "Conv2d", "input_shape": np.asarray(p["in_shape"][1:], np.int64), "weight": w,
                    "stride": np.asarray(p["stride"], np.int64), "padding": np.asarray(p["padding"], np.int64),
                    "dilation": np.asarray(p["dilation"], np.int64), "groups": np.int64(p["groups"]),
                    "bias": np.asarray(p["bias"], np.float32)}
        d = {"type": "Conv1d", "input_shape": np.int64(p["in_shape"][1]), "weight": w,
             "stride": np.int64(p["stride"][0]), "padding": np.int64(p["padding"][0]),
             "dilation": np.int64(p["dilation"][0]), "groups": np.int64(p["groups"]),
             "bias": np.asarray(p["bias"], np.float32)}
    elif k == "Affine":
        d = {"type": "Affine", "weight": np.asarray(p["weight"], np.float32), "bias": np.asarray(p["bias"], np.float32)}
    elif k == "IF" and neuron == "cubalif":
        thr = np.where(p["fires"], p["thr"], NEVER).astype(np.float32)
        ones = np.ones(n.shape, np.float32)
        d = {"type": "CubaLIF", "tau_syn": ones * np.float32(DT), "tau_mem": ones * np.float32(_SLOW * DT),
             "r": ones * np.float32(_SLOW), "v_leak": ones * 0, "v_threshold": _full(thr, n.shape), "w_in": ones}
    elif k == "IF":
        thr = np.where(p["fires"], p["thr"], NEVER).astype(np.float32)
        d = {"type": "IF", "r": np.ones(n.shape, np.float32), "v_threshold": _full(thr, n.shape)}
    elif k == "SumPool":
        d = {"type": "SumPool2d", "kernel_size": np.asarray(p["kernel"], np.int64),
             "stride": np.asarray(p["stride"], np.int64), "padding": np.zeros(2, np.int64)}
    elif k == "Flatten":
        d = {"type": "Flatten", "start_dim": np.int64(0), "end_dim": np.int64(-1),
             "input_type": np.asarray(p["in_shape"], np.int64)}
    else:
        raise ValueError(f"no NIR node for {k}")
    if d["type"] in _META_TYPES:
        d["metadata"] = _meta(n.meta)
    return d


def _describe(n: _N) -> dict:
    """What the graph metadata ``nodes`` says of ``n``: its JSON-able metadata."""
    out = {}
    for k, v in n.meta.items():
        if isinstance(v, (str, bool, int, float)) and not isinstance(v, np.generic):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (str, int, float)) else str(x) for x in v]
    return out


def graph_dict(nodes: dict[str, _N], edges: list[tuple[str, str]], meta: dict, neuron: str = "if") -> dict:
    described = {name: _describe(n) for name, n in nodes.items()}
    gm = _meta(dict(meta, format=FORMAT, neuron=neuron))
    if neuron == "cubalif":
        gm["dt"] = DT
        gm["import"] = ("norse.torch.from_nir(graph, reset_method=norse.torch.functional.reset.reset_subtract, "
                        f"dt={DT})")
    gm["nodes"] = json.dumps({k: v for k, v in described.items() if v}, sort_keys=True)
    return {"type": "NIRGraph", "nodes": {name: node_dict(n, neuron) for name, n in nodes.items()},
            "edges": np.array(edges, dtype=object).reshape(-1, 2), "metadata": gm}


def write_bytes(gd: dict) -> bytes:
    """The HDF5 file of graph dictionary ``gd`` (gzip, as ``nir.write`` does from 1.0.5 on)."""
    import h5py

    str_t = h5py.string_dtype()

    def rec(group, d: dict):
        for k, v in d.items():
            if isinstance(v, dict):
                if k != "metadata" or v:
                    rec(group.create_group(str(k)), v)
            elif isinstance(v, str):
                group.create_dataset(k, data=v, dtype=str_t)
            elif isinstance(v, np.ndarray) and v.dtype == object:
                group.create_dataset(k, data=v, dtype=str_t)
            elif isinstance(v, np.ndarray) and v.size > 64:
                group.create_dataset(k, data=v, dtype=v.dtype, compression="gzip")
            else:
                group.create_dataset(k, data=v)

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("version", data="1.0.4", dtype=str_t)
        rec(f.create_group("node"), gd)
    return buf.getvalue()


def read_bytes(data: bytes):
    """``nir.read`` of the file ``data``; nir >= 1.0.5 type-checks it (a failure: read unchecked,
    and the note says so). Returns (graph, notes)."""
    nir = _nir()
    try:
        return nir.read(io.BytesIO(data)), []
    except (ValueError, AssertionError) as e:
        try:
            graph = nir.read(io.BytesIO(data), type_check=False)
        except TypeError:    # nir 1.0.4 has no type check: the error is real
            raise e from None
        return graph, [f"nir's type check rejects the graph ({e}); read it with nir.read(path, type_check=False)"]
