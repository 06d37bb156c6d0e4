"""Portable SNN files: the BurstIF functions inlined, nothing but standard ONNX ops left.

A portable file needs no custom domain at all: any ONNX runtime that implements the
standard ops (Scan included) runs it. Its outputs equal the kernel's bit for bit
(docs/method.md §2: the fallback performs the same float32 operations in the same order).

The file keeps a record of its neurons (metadata ``onnx2burst.portable_neurons``: each
BurstIF node's name, inputs, outputs and attributes), so that ``fold_back`` can put the
BurstIF nodes back: every command that reads an SNN (eval, search, export-torch,
export-nir) accepts a portable file and sees the neurons it was made from.
"""
from __future__ import annotations

import json

import onnx
from onnx import helper, inliner

from ..errors import ConfigError
from ..ops import DOMAIN, OP_TYPE, attach_function
from ..snn import METADATA_PREFIX

#: metadata key of the neuron record a portable file keeps
RECORD_KEY = METADATA_PREFIX + "portable_neurons"


def _record(model: onnx.ModelProto) -> list[dict]:
    return [{"name": n.name, "inputs": list(n.input), "outputs": list(n.output),
             "attributes": {a.name: helper.get_attribute_value(a) for a in n.attribute}}
            for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def _set_meta(model: onnx.ModelProto, key: str, value: str | None) -> None:
    keep = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    if value is not None:
        model.metadata_props.add(key=key, value=value)


def make_portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline every model-local function (onnx.inliner), drop the onnx2burst domain import and
    record the BurstIF nodes in the metadata (``fold_back`` restores them)."""
    record = _record(model)
    out = inliner.inline_local_functions(model)
    left = [n.name or n.op_type for n in out.graph.node if n.domain == DOMAIN]
    if left:
        raise ValueError(f"nodes of domain {DOMAIN!r} remain after inlining (no function for them?): {left[:5]}")
    keep = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    if record:
        _set_meta(out, RECORD_KEY, json.dumps(record))
    onnx.checker.check_model(out, full_check=True)
    return out


def is_portable(model: onnx.ModelProto) -> bool:
    """True when the model uses only the standard ONNX domains."""
    std = {"", "ai.onnx"}

    def walk(graph):
        for n in graph.node:
            if n.domain not in std:
                return False
            for a in n.attribute:
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    if not walk(g):
                        return False
        return True

    return not model.functions and walk(model.graph)


def _read_record(model: onnx.ModelProto) -> list[dict] | None:
    raw = next((p.value for p in model.metadata_props if p.key == RECORD_KEY), None)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        for r in record:
            if not (isinstance(r["name"], str) and all(isinstance(t, str) for t in r["inputs"] + r["outputs"])
                    and isinstance(r["attributes"], dict) and len(r["inputs"]) == 2 and len(r["outputs"]) == 2):
                raise ValueError(r)
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"the portable file's metadata {RECORD_KEY!r} is not a list of neurons") from None
    return record


def _inlined_nodes(r: dict, producer: dict[str, int], nodes) -> set[int]:
    """Indices of the nodes that compute neuron ``r``'s outputs from its inputs."""
    stop, found, todo = set(r["inputs"]), set(), list(r["outputs"])
    for t in todo:
        if t not in producer:
            raise ConfigError(f"neuron {r['name']}: its output {t!r} is not computed in the portable file")
    while todo:
        t = todo.pop()
        if t in stop or t not in producer or producer[t] in found:
            continue
        found.add(producer[t])
        todo.extend(i for i in nodes[producer[t]].input if i)
    return found


def fold_back(model: onnx.ModelProto) -> onnx.ModelProto:
    """The SNN a portable file was made from: each neuron's inlined nodes replaced by its BurstIF
    node (with the fallback function attached). A model that is not a portable file with a
    neuron record comes back unchanged; ``ConfigError`` when the record does not fit the graph
    (the file was edited after ``make_portable``)."""
    record = _read_record(model) if is_portable(model) else None
    if not record:
        return model
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    place, drop = {}, set()
    for r in record:
        found = _inlined_nodes(r, producer, nodes)
        if found & drop:
            raise ConfigError(f"neuron {r['name']}: its inlined nodes overlap another neuron's in the portable file")
        made = {o for i in found for o in nodes[i].output}
        inside = {i for i in found}
        for j, n in enumerate(nodes):
            if j not in inside and any(t in made and t not in r["outputs"] for t in n.input):
                raise ConfigError(f"neuron {r['name']}: node {n.name or n.op_type!r} reads a tensor inside the "
                                  "neuron (the portable file was edited)")
        drop |= found
        place[max(found)] = helper.make_node(OP_TYPE, r["inputs"], r["outputs"], name=r["name"], domain=DOMAIN,
                                             **r["attributes"])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(place.get(i, n) for i, n in enumerate(nodes) if i not in drop or i in place)
    alive = {o for n in out.graph.node for o in n.output} | {i.name for i in out.graph.input}
    keep = [v for v in out.graph.value_info if v.name in alive]
    del out.graph.value_info[:]
    out.graph.value_info.extend(keep)
    _set_meta(out, RECORD_KEY, None)
    attach_function(out)
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"the portable file's neurons do not fold back into BurstIF nodes: {first}") from None
    return out
