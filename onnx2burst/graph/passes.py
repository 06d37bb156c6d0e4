"""Stage 1 of a conversion: bring any ReLU network into the one form the rest relies on.

Order: opset (>= 13) -> node names -> Constant/ConstantOfShape folding -> Identity/Dropout
removal -> shape inference -> MatMul+Add to Gemm -> BatchNorm folding -> symbolic batch
(and hard-coded batch in Reshape constants) -> MaxPool replacement (``maxpool="avg"``) ->
cleanup and shape inference again. Every pass that changed something leaves a note.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ..errors import GraphError
from .batch import fix_batch_reshapes, free_batch
from .batchnorm import fold_batchnorm
from .cleanup import cleanup, name_nodes
from .constants import fold_constants
from .gemm import matmul_to_gemm
from .index import default_opset
from .maxpool import replace_maxpool
from .opset import ensure_opset
from .shapes import infer_shapes, tensor_info

__all__ = ["Canonical", "canonicalize"]


@dataclass
class Canonical:
    """The canonical ANN: ``model`` (shapes inferred), ``info`` (``shapes.tensor_info``),
    its default ``opset``, and ``notes`` saying what the passes changed."""

    model: onnx.ModelProto
    info: dict
    opset: int
    notes: list[str] = field(default_factory=list)


def canonicalize(model: onnx.ModelProto, *, maxpool: str = "lateral") -> Canonical:
    """Run the canonicalisation passes on a copy of ``model``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if not m.graph.node:
        raise GraphError("the model has no nodes")
    notes: list[str] = []
    m, note = ensure_opset(m)
    if note:
        notes.append(note)
    opset = default_opset(m)
    g = m.graph
    name_nodes(g)
    n = fold_constants(m, opset)
    if n:
        notes.append(f"folded {n} constant node(s) into initializers")
    n = cleanup(m)
    if n:
        notes.append(f"removed {n} Identity/Dropout/dead node(s)")
    m = infer_shapes(m)
    n = matmul_to_gemm(m, tensor_info(m))
    if n:
        notes.append(f"rewrote {n} MatMul(+Add) as Gemm")
    n = fold_batchnorm(m)
    if n:
        notes.append(f"folded {n} BatchNormalization/affine node(s) into Conv/Gemm")
    fixed = free_batch(m)
    if fixed:
        changed = []
        for _ in range(len(m.graph.node) + 1):
            # a Reshape freed here frees the batch of the tensors after it: the next Reshape of a
            # chain (a channel shuffle's 5-D view and back) is found in the next round
            m = infer_shapes(m)
            new = fix_batch_reshapes(m, tensor_info(m), fixed)
            free_batch(m)  # shape inference wrote the fixed batch back into the outputs
            if not new:
                break
            changed += new
        notes.append(f"batch axis made symbolic (was {sorted(fixed)})"
                     + (f"; Reshape/Flatten nodes rewritten: {', '.join(changed)}" if changed else ""))
    if maxpool == "avg":
        done = replace_maxpool(m)
        if done:
            notes.append(f"MaxPool replaced by AveragePool (--maxpool avg): {', '.join(done)}")
    cleanup(m)
    m = infer_shapes(m)
    _check_valid(m)
    return Canonical(model=m, info=tensor_info(m), opset=opset, notes=notes)


def _check_valid(m: onnx.ModelProto) -> None:
    """onnx's checker on the canonical graph (sorted, constants folded): a dangling input, an
    op onnx does not know, a bad attribute are reported here, by node, not by onnxruntime
    halfway through the calibration."""
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        detail = " ".join(str(e).split())
        raise GraphError(f"the model is not a valid ONNX graph: {detail[:400]}") from None
    except ValueError:  # over 2 GB: onnx cannot check it in memory; onnxruntime will
        pass
