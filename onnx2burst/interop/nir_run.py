"""Run an exported NIR graph with the released importers, the way the tests and
``benchmarks/nir_agreement.py`` do: present the input at each of T steps and average the output.

Each function takes a ``nir.NIRGraph`` (``nir.read(path)``) and ``x`` [N, ...] (float32, the
SNN's input) and returns the mean output over the T steps as a numpy array [N, K]. Needs torch
and the importer (``pip install sinabs`` / ``pip install norse``); the README shows the same
steps written out.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["run_sinabs", "run_norse", "sinabs_as_burstif"]


def _chunks(n: int, T: int, rows: int):
    step = max(1, rows // max(T, 1))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def sinabs_as_burstif(net, graph) -> int:
    """Make each Sinabs IAF layer of ``net`` (``sinabs.from_nir(graph, ...)``) compute BurstIF
    (docs/method.md §2): at most ``psi`` spikes per step (``spike_fn = MaxSpike(psi)``, psi from
    the IF node's metadata; the importer makes ``MultiSpike`` layers, ``floor(v/threshold)``
    spikes with no cap) and no floor on the membrane (``min_v_mem = None``; the importer floors it
    at ``-threshold``). Returns the number of layers changed."""
    from sinabs.activation import MaxSpike

    changed = 0
    for name, node in graph.nodes.items():
        layer = getattr(net, name.replace(".", "_"), None)
        if type(node).__name__ == "IF" and layer is not None and hasattr(layer, "spike_fn"):
            layer.spike_fn = MaxSpike(int(node.metadata.get("psi", 1)))
            layer.min_v_mem = None
            changed += 1
    return changed


def run_sinabs(graph, x: np.ndarray, T: int, *, burstif: bool = False, rows: int = 1024) -> np.ndarray:
    """``sinabs.from_nir``: its layers take [batch*T, ...] (sample-major) and step through T
    themselves. ``burstif``: apply ``sinabs_as_burstif`` first. ``rows``: batch*T rows per call."""
    import sinabs
    import torch

    if graph.metadata.get("neuron") == "cubalif":
        raise ValueError("Sinabs does not import CubaLIF nodes; export with neuron='if'")
    with warnings.catch_warnings():            # nirtorch.load: "being deprecated"
        warnings.simplefilter("ignore", DeprecationWarning)
        net = sinabs.from_nir(graph, num_timesteps=T)
    if burstif:
        sinabs_as_burstif(net, graph)
    out = []
    with torch.no_grad():
        for a, b in _chunks(len(x), T, rows):
            sinabs.reset_states(net)
            xt = torch.from_numpy(np.ascontiguousarray(x[a:b], np.float32)).repeat_interleave(T, 0)
            y, _ = net(xt)
            out.append(y.reshape(b - a, T, -1).mean(1).numpy())
    return np.concatenate(out)


def run_norse(graph, x: np.ndarray, T: int, *, rows: int = 256) -> np.ndarray:
    """``norse.torch.from_nir``: a step per call, the state passed back in. A ``neuron="cubalif"``
    export is imported with ``reset_method=reset_subtract`` and its ``dt`` (graph metadata)."""
    import norse.torch as norse
    import torch

    kw = {}
    if graph.metadata.get("neuron") == "cubalif":
        from norse.torch.functional.reset import reset_subtract

        kw = {"reset_method": reset_subtract, "dt": float(graph.metadata["dt"])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        net = norse.from_nir(graph, **kw)
    out = []
    with torch.no_grad():
        for a, b in _chunks(len(x), 1, rows):
            xt, state, acc = torch.from_numpy(np.ascontiguousarray(x[a:b], np.float32)), None, 0
            for _ in range(T):
                y, state = net(xt, state)
                acc = acc + y
            out.append((acc / T).reshape(b - a, -1).numpy())
    return np.concatenate(out)
