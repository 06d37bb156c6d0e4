"""The sensitivity tables' cells as Ray tasks (``--workers N``, ``--ray-address ADDR``).

One task is one (layer, candidate) cell of one batch: ``cells.run_layer`` on the layer's input
and boundary tensors, which the driver puts into the object store once per batch (each tensor
once, whatever the number of tasks reading it). The SNN goes to the object store once; each
worker process builds its cell and tail sessions on first use and keeps them. The driver adds
the results up in the in-process order (batch, layer, candidate), so the tables are the same
numbers as without Ray.

Ray is imported here only, and this module only when workers or an address are given.
Ctrl-C (or a failing task: one line naming the layer, the candidate and the worker's error)
ends the tasks in flight by shutting the local Ray instance down, or by leaving the cluster.
"""
from __future__ import annotations

import hashlib
import time
from typing import Sequence

import numpy as np

from ..errors import Onnx2BurstError
from .cells import Candidate, Metric, layer_inputs, run_layer
from .graphs import SearchGraphs

__all__ = ["SearchWorkerError", "RayRunner"]

#: per worker process: the search graphs of the SNNs it has seen, by their SHA-256
_GRAPHS: dict[str, SearchGraphs] = {}


class SearchWorkerError(Onnx2BurstError):
    """A Ray task of the search failed or its worker died; the message says which cell."""


def _cell_task(key: str, model: list, kernel: bool, i: int, names: Sequence[str], correction: str, metric: Metric,
               a_logits: np.ndarray, todo: Sequence[Candidate], *arrays: np.ndarray):
    """In a worker: one layer's candidates on one batch (``model``: [ObjectRef of the SNN's bytes],
    fetched only the first time this worker meets ``key``)."""
    sg = _GRAPHS.get(key)
    if sg is None:
        import onnx
        import ray

        _GRAPHS.clear()  # one SNN at a time: the previous table's sessions go
        sg = _GRAPHS[key] = SearchGraphs(onnx.load_from_string(ray.get(model[0])), 1, kernel)
    return run_layer(sg, i, dict(zip(names, arrays)), a_logits, todo, correction, metric)


class RayRunner:
    """Runs each batch's cells on Ray: a local instance of ``workers`` CPUs, the cluster at
    ``address``, or the instance this process already started."""

    def __init__(self, sg: SearchGraphs, correction: str, metric: Metric, *, workers: int = 0,
                 address: str | None = None, timings: dict | None = None):
        try:
            import ray
        except ImportError:
            raise Onnx2BurstError("--workers/--ray-address need Ray: pip install 'onnx2burst[ray]'") from None
        self.ray, self.sg, self.correction, self.metric = ray, sg, correction, metric
        self.timings = timings if timings is not None else {}
        t = time.perf_counter()
        self.started = False
        if address:
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            except Exception as e:  # noqa: BLE001 - any failure to connect is the address's
                raise Onnx2BurstError(f"--ray-address {address}: cannot join the Ray cluster: "
                                      f"{' '.join(str(e).split())[:300]}") from None
            self.started = True
        elif not ray.is_initialized():
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            self.started = True
        data = sg.snn.SerializeToString()
        self.key = hashlib.sha256(data).hexdigest()
        self.model = [ray.put(data)]            # once; a worker fetches it on its first task
        self.task = ray.remote(num_cpus=1, max_retries=0)(_cell_task)
        self.timings["ray start"] = self.timings.get("ray start", 0.0) + time.perf_counter() - t

    def run(self, env, a_logits, work, advance):
        """The results of ``work`` ([(layer, candidates)]) on this batch, as the in-process run
        gives them: one list of (metric per sample, spikes) per layer."""
        ray = self.ray
        put: dict[str, object] = {}
        logits = ray.put(a_logits)
        refs, where = [], {}
        for w, (i, todo) in enumerate(work):
            names = layer_inputs(self.sg, i)
            for nm in names:
                if nm not in put:
                    put[nm] = ray.put(env[nm])      # each tensor once per batch
            for c, cand in enumerate(todo):
                ref = self.task.remote(self.key, self.model, self.sg.kernel, i, names, self.correction, self.metric,
                                       logits, [cand], *[put[nm] for nm in names])
                refs.append(ref)
                where[ref] = (w, c)
        results = [[None] * len(todo) for _, todo in work]
        pending = list(refs)
        # on a failure or Ctrl-C the pending tasks are not cancelled one by one (ray.cancel racing
        # with a reply on its way trips an internal check of Ray's and the driver dies in a native
        # stack trace): ``close`` ends the local instance, or leaves the cluster, which ends the
        # tasks of this driver
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                w, c = where[ref]
                i, todo = work[w]
                try:
                    results[w][c] = ray.get(ref)[0]
                except ray.exceptions.RayError as e:
                    raise SearchWorkerError(self._message(i, todo[c], e)) from None
                advance(1, description=f"sensitivity {self.sg.neurons[i].name}")
        return results

    def _message(self, i, cand, e) -> str:
        kind, _, psi, _ = cand
        cause = getattr(e, "cause", None)
        text = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
        text = " ".join(text.split())
        if len(text) > 300:
            text = text[:300] + "..."
        return f"search worker failed on layer {self.sg.neurons[i].name} ({kind} candidate, psi {psi}): {text}"

    def close(self):
        if self.started:
            self.started = False
            _deferring_sigint(self.ray.shutdown)


def _deferring_sigint(fn) -> None:
    """``fn()`` with Ctrl-C held back until it returns (then raised): stopping Ray half way leaves
    its processes behind and can end the driver in a native stack trace."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        fn()
        return
    got = []
    old = signal.signal(signal.SIGINT, lambda *_: got.append(True))
    try:
        fn()
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise KeyboardInterrupt
