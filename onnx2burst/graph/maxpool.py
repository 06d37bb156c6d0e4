"""MaxPool handling (§3).

On spikes, MaxPool per timestep is not max-pooling of rates: the mean over T of the max is
at least the max of the means. Three options are implemented:

- ``"lateral"`` (default): lateral inhibition (``onnx2burst.rewrite.rewriter._lateral_pool``):
  per timestep each window passes the value of its input with the largest sum so far, so the
  output rate converges to the max of the input rates as T grows.
- ``"spikes"``: keep the MaxPool node; it runs per timestep on the spike maps (as the
  authors' ImageNet ResNet does), and the bias calibration (§5) of the next neurons absorbs
  part of the bias it adds. Its error does not shrink with T. It exports to NIR (--lossy).
- ``"avg"``: replace every MaxPool by an AveragePool of the same window (and
  GlobalMaxPool by GlobalAveragePool) *in the ANN too*, so the thresholds and the bias
  calibration target the changed ANN. Exact under rate coding, but it changes the ANN.

Lateral pooling is the default because it converges with T and keeps the ANN; the measured
comparison of the three is in docs/results.md (docs/method.md §3).
"""
from __future__ import annotations

import onnx
from onnx import helper

from ..errors import GraphError
from .index import attrs as all_attrs

__all__ = ["replace_maxpool"]


def replace_maxpool(model: onnx.ModelProto) -> list[str]:
    """Replace MaxPool/GlobalMaxPool by AveragePool/GlobalAveragePool in place; returns node names."""
    done = []
    for k, node in enumerate(list(model.graph.node)):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "GlobalMaxPool":
            new = helper.make_node("GlobalAveragePool", list(node.input), list(node.output), name=node.name)
        elif node.op_type == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                raise GraphError(f"MaxPool {node.name!r}: its Indices output is used; cannot replace it by AveragePool")
            attrs = all_attrs(node)
            if any(d != 1 for d in attrs.pop("dilations", [])):
                raise GraphError(f"MaxPool {node.name!r} has dilations; AveragePool cannot replace it")
            attrs.pop("storage_order", None)
            attrs["count_include_pad"] = 0  # like MaxPool's padding, which never wins
            new = helper.make_node("AveragePool", list(node.input[:1]), list(node.output[:1]), name=node.name, **attrs)
        else:
            continue
        model.graph.node[k].CopyFrom(new)
        done.append(node.name)
    return done
