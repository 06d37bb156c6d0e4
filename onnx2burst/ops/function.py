"""The standard-op fallback of BurstIF: a FunctionProto, docs/method.md §2.

The function has the same domain and name as the C++ kernel. onnxruntime uses the
kernel when our library is registered and inlines this function otherwise;
``onnx.reference.ReferenceEvaluator`` runs it too. One body serves every T, psi and
tau: they are attribute references, and time is a Scan over the T axis. Each step
performs exactly the float32 operations of ``reference.burst_if``, in the same order,
so the three agree bit for bit.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .schema import DOMAIN, MIN_OPSET, OP_TYPE

_F = TensorProto.FLOAT
_I = TensorProto.INT64


def _const(name: str, value, dtype=_F) -> onnx.NodeProto:
    arr = value if isinstance(value, (list, tuple)) else [value]
    dims = [len(arr)] if isinstance(value, (list, tuple)) else []
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, dims, arr))


def _attr_const(name: str, attr: str, kind: str) -> onnx.NodeProto:
    """A Constant whose value is the calling node's attribute ``attr`` (value_int / value_float)."""
    node = helper.make_node("Constant", [], [name])
    a = onnx.AttributeProto(name=kind, ref_attr_name=attr,
                            type=onnx.AttributeProto.INT if kind == "value_int" else onnx.AttributeProto.FLOAT)
    node.attribute.append(a)
    return node


def _step_body() -> onnx.GraphProto:
    """One timestep (the loop body of §2) as a Scan body, on a step viewed as ``[N, C, K]``.

    States: u, spk, theta, offset, psi, fires (the last four pass through). Scan input: x_t.
    Scan output: y_t = s * theta.
    """
    n = helper.make_node
    nodes = [
        _const("zero", 0.0),
        _const("ax12", [1, 2], _I),
        n("Add", ["u_in", "x_t"], ["ux"]),
        n("Add", ["ux", "offset_in"], ["u1"]),                 # u = u + X[t] + theta/(2T)
        n("Div", ["u1", "theta_in"], ["q"]),                   # u / theta
        n("Floor", ["q"], ["fq"]),
        n("Greater", ["fq", "zero"], ["pos"]),                 # clip(floor(u/theta), 0, psi) as two
        n("Where", ["pos", "fq", "zero"], ["lo"]),             # selects: NaN -> 0, as in the kernel
        n("Greater", ["lo", "psi_in"], ["big"]),
        n("Where", ["big", "psi_in", "lo"], ["sc"]),
        n("Where", ["fires_in", "sc", "zero"], ["s"]),         # theta <= 0 never fires
        n("Mul", ["s", "theta_in"], ["y_t"]),                  # Y[t] = s * theta
        n("Sub", ["u1", "y_t"], ["u_out"]),                    # reset by subtraction
        n("ReduceSum", ["s", "ax12"], ["cnt"], keepdims=0),
        n("Add", ["spk_in", "cnt"], ["spk_out"]),
        n("Identity", ["theta_in"], ["theta_out"]),
        n("Identity", ["offset_in"], ["offset_out"]),
        n("Identity", ["psi_in"], ["psi_out"]),
        n("Identity", ["fires_in"], ["fires_out"]),
    ]
    vi = helper.make_tensor_value_info
    step, chan = ["N", "C", "K"], ["c0", "c1", "c2"]  # onnxruntime's Scan needs ranks for the body
    states = [("u", _F, step), ("spk", _F, ["N"]), ("theta", _F, chan), ("offset", _F, chan),
              ("psi", _F, []), ("fires", TensorProto.BOOL, chan)]
    inputs = [vi(f"{s}_in", t, d) for s, t, d in states] + [vi("x_t", _F, step)]
    outputs = [vi(f"{s}_out", t, d) for s, t, d in states] + [vi("y_t", _F, step)]
    return helper.make_graph(nodes, "burst_if_step", inputs, outputs)


def _signed_step_body() -> onnx.GraphProto:
    """One timestep of the signed neuron (``reference._signed``): the states of ``_step_body``
    plus w (``[1, C, 1]``, accumulates ``2 * offset``), and step_w, theta_n, neg passing through."""
    n = helper.make_node
    nodes = [
        _const("zero", 0.0),
        _const("ax12", [1, 2], _I),
        n("Add", ["u_in", "x_t"], ["ux"]),
        n("Add", ["ux", "offset_in"], ["u1"]),                 # u = u + X[t] + theta/(2T)
        n("Add", ["w_in", "stepw_in"], ["w1"]),                # w = w + (offset + offset)
        n("Div", ["u1", "theta_in"], ["q"]),
        n("Floor", ["q"], ["fq"]),
        n("Greater", ["fq", "zero"], ["pos"]),
        n("Where", ["pos", "fq", "zero"], ["lo"]),
        n("Greater", ["lo", "psi_in"], ["big"]),
        n("Where", ["big", "psi_in", "lo"], ["sc"]),
        n("Where", ["fires_in", "sc", "zero"], ["s"]),
        n("Sub", ["w1", "u1"], ["d"]),                         # negative side: (w - u) / theta_n
        n("Div", ["d", "thetan_in"], ["qn"]),
        n("Floor", ["qn"], ["fqn"]),
        n("Greater", ["fqn", "zero"], ["posn"]),
        n("Where", ["posn", "fqn", "zero"], ["lon"]),
        n("Greater", ["lon", "psi_in"], ["bign"]),
        n("Where", ["bign", "psi_in", "lon"], ["scn"]),
        n("Where", ["neg_in", "scn", "zero"], ["sn"]),
        n("Mul", ["s", "theta_in"], ["yp"]),
        n("Sub", ["u1", "yp"], ["un"]),
        n("Mul", ["sn", "thetan_in"], ["rn"]),
        n("Add", ["un", "rn"], ["u_out"]),                     # u = (u - sp*theta) + sn*theta_n
        n("Mul", ["sn", "theta_in"], ["yn"]),
        n("Sub", ["yp", "yn"], ["y_t"]),                       # Y = sp*theta - sn*theta
        n("Add", ["s", "sn"], ["both"]),
        n("ReduceSum", ["both", "ax12"], ["cnt"], keepdims=0),
        n("Add", ["spk_in", "cnt"], ["spk_out"]),
        n("Identity", ["w1"], ["w_out"]),
    ] + [n("Identity", [f"{k}_in"], [f"{k}_out"]) for k in ("theta", "offset", "psi", "fires", "stepw", "thetan", "neg")]
    vi = helper.make_tensor_value_info
    step, chan = ["N", "C", "K"], ["c0", "c1", "c2"]
    states = [("u", _F, step), ("spk", _F, ["N"]), ("theta", _F, chan), ("offset", _F, chan),
              ("psi", _F, []), ("fires", TensorProto.BOOL, chan), ("w", _F, chan), ("stepw", _F, chan),
              ("thetan", _F, chan), ("neg", TensorProto.BOOL, chan)]
    inputs = [vi(f"{s}_in", t, d) for s, t, d in states] + [vi("x_t", _F, step)]
    outputs = [vi(f"{s}_out", t, d) for s, t, d in states] + [vi("y_t", _F, step)]
    return helper.make_graph(nodes, "burst_if_signed_step", inputs, outputs)


def make_function(opset: int = MIN_OPSET, signed: bool = False) -> onnx.FunctionProto:
    """The BurstIF FunctionProto, written against default-domain ``opset`` (>= 13).

    ``signed``: the body that also reads attribute ``alpha`` (default ``[0.0]``) and fires
    negative spikes (``reference._signed``); it gives the same bits as the plain body where
    alpha is 0. Files whose neurons carry no alpha get the plain body."""
    if opset < MIN_OPSET:
        raise ValueError(f"the BurstIF fallback needs opset >= {MIN_OPSET}, got {opset}")
    n = helper.make_node
    zero = {"allowzero": 1} if opset >= 14 else {}  # N = 0 needs allowzero (opset 14); at 13 it fails
    nodes = [
        _attr_const("T_i", "T", "value_int"),
        _attr_const("psi_i", "psi", "value_int"),
        _attr_const("tau_f", "tau", "value_float"),
        _const("one_i", [1], _I),
        _const("two_i", 2, _I),
        _const("big_i", [2**62], _I),
        _const("zero_f", 0.0),
        _const("one_f", 1.0),
        n("Cast", ["psi_i"], ["psi_f"], to=_F),
        n("Mul", ["T_i", "two_i"], ["twoT_i"]),
        n("Cast", ["twoT_i"], ["twoT_f"], to=_F),
        # shapes: X [T*N, C, ...] viewed as [T, N, C, K]
        n("Shape", ["X"], ["shp"]),
        _const("zero_idx", [0], _I),
        n("Gather", ["shp", "zero_idx"], ["TN"], axis=0),
        n("Gather", ["shp", "one_i"], ["C1"], axis=0),
        n("Reshape", ["T_i", "one_i"], ["T1"]),
        n("Div", ["TN", "T1"], ["N1"]),
        _const("two_v", [2], _I),
        n("Slice", ["shp", "two_v", "big_i"], ["spatial"]),
        n("ReduceProd", ["spatial"], ["K1"], keepdims=1),      # 1 for rank 2; no -1: N may be 0
        n("Concat", ["T1", "N1", "C1", "K1"], ["tshape"], axis=0),
        n("Reshape", ["X", "tshape"], ["Xt"], **zero),
        n("Shape", ["Xt"], ["tshp"]),
        n("Slice", ["tshp", "one_i", "big_i"], ["stepshape"]),
        # theta = tau * vth, broadcast along axis 1 of a step: [1, C, 1]
        _const("bshape", [1, -1, 1], _I),
        n("Reshape", ["vth", "bshape"], ["vth_b"]),
        n("Mul", ["tau_f", "vth_b"], ["theta_raw"]),
        n("Greater", ["theta_raw", "zero_f"], ["fires"]),
        n("Where", ["fires", "theta_raw", "one_f"], ["theta"]),
        n("Div", ["theta", "twoT_f"], ["offset"]),              # theta / (2T)
        n("ConstantOfShape", ["stepshape"], ["u0"], value=helper.make_tensor("v", _F, [1], [0.0])),
        n("ConstantOfShape", ["N1"], ["spk0"], value=helper.make_tensor("v", _F, [1], [0.0])),
    ]
    if not signed:
        nodes += [
            n("Scan", ["u0", "spk0", "theta", "offset", "psi_f", "fires", "Xt"],
              ["u_T", "spikes", "theta_T", "offset_T", "psi_T", "fires_T", "Yt"],
              num_scan_inputs=1, body=_step_body()),
            n("Reshape", ["Yt", "shp"], ["Y"], **zero),
        ]
        return helper.make_function(
            DOMAIN, OP_TYPE, ["X", "vth"], ["Y", "spikes"], nodes,
            opset_imports=[helper.make_opsetid("", opset)],
            attributes=["T", "psi"],
            attribute_protos=[helper.make_attribute("tau", 1.0)],
        )
    alpha = helper.make_node("Constant", [], ["alpha_f"])
    alpha.attribute.append(onnx.AttributeProto(name="value_floats", ref_attr_name="alpha",
                                               type=onnx.AttributeProto.FLOATS))
    nodes += [
        alpha,
        _const("fmax", 3.4028234663852886e38),
        n("Reshape", ["alpha_f", "bshape"], ["alpha_b"]),
        n("Greater", ["alpha_b", "zero_f"], ["apos"]),
        n("Where", ["apos", "alpha_b", "one_f"], ["asafe"]),
        n("Div", ["theta", "asafe"], ["thn_raw"]),             # theta_n = theta / alpha
        n("Greater", ["thn_raw", "fmax"], ["huge"]),
        n("Not", ["huge"], ["finite"]),
        n("And", ["fires", "apos"], ["neg0"]),
        n("And", ["neg0", "finite"], ["neg"]),
        n("Where", ["neg", "thn_raw", "one_f"], ["thetan"]),
        n("Add", ["offset", "offset"], ["stepw"]),
        n("Sub", ["stepw", "stepw"], ["w0"]),
        n("Scan", ["u0", "spk0", "theta", "offset", "psi_f", "fires", "w0", "stepw", "thetan", "neg", "Xt"],
          ["u_T", "spikes", "theta_T", "offset_T", "psi_T", "fires_T", "w_T", "stepw_T", "thetan_T", "neg_T", "Yt"],
          num_scan_inputs=1, body=_signed_step_body()),
        n("Reshape", ["Yt", "shp"], ["Y"], **zero),
    ]
    return helper.make_function(
        DOMAIN, OP_TYPE, ["X", "vth"], ["Y", "spikes"], nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["T", "psi"],
        attribute_protos=[helper.make_attribute("tau", 1.0), helper.make_attribute("alpha", [0.0])],
    )
