"""``onnx2burst doctor``: versions, whether the BurstIF kernel loads, thread settings."""
from __future__ import annotations

import os
import platform

import click


def _kernel_smoke() -> str:
    """Run one BurstIF node with the kernel and compare it with the numpy reference."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from onnx2burst import ops

    x = np.linspace(-1, 3, 4 * 2 * 3, dtype=np.float32).reshape(4 * 2, 3)
    vth = np.array([0.5, 1.0, 0.0], np.float32)
    vi = helper.make_tensor_value_info
    g = helper.make_graph([ops.make_node("X", "vth", "Y", T=4, psi=2, spikes="S")], "smoke",
                          [vi("X", TensorProto.FLOAT, [8, 3]), vi("vth", TensorProto.FLOAT, [3])],
                          [vi("Y", TensorProto.FLOAT, [8, 3]), vi("S", TensorProto.FLOAT, [2])])
    m = ops.attach_function(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(m)
    y, s = ops.make_session(m, kernel=True, layout="plain").run(None, {"X": x, "vth": vth})
    ry, rs = ops.burst_if(x, vth, 4, 2)
    return "matches the reference" if np.array_equal(y, ry) and np.array_equal(s, rs) else "DIFFERS from the reference"


@click.command()
def doctor():
    """Print versions, whether the BurstIF kernel loads, and the thread settings.

    \b
    Example:
      onnx2burst doctor
    """
    import numpy
    import onnx
    import onnxruntime

    from onnx2burst import __version__, ops

    rows = [
        ("onnx2burst", __version__),
        ("python", platform.python_version()),
        ("onnxruntime", onnxruntime.__version__),
        ("onnx", f"{onnx.__version__} (max opset {onnx.defs.onnx_opset_version()})"),
        ("numpy", numpy.__version__),
    ]
    ok, where = ops.kernel_status()
    rows.append(("BurstIF kernel", ("loads: " + where) if ok else where))
    if ok:
        try:
            rows.append(("kernel self-test", _kernel_smoke()))
        except Exception as e:  # noqa: BLE001
            rows.append(("kernel self-test", f"FAILED: {e}"))
    rows.append(("fallback function", f"standard ops, opset >= {ops.MIN_OPSET}"))
    rows.append(("CPU cores", str(os.cpu_count())))
    rows.append(("intra-op threads", "onnxruntime default (one per physical core); "
                 "set with --threads where a command has it"))
    for var in ("OMP_NUM_THREADS", "ORT_INCLUDE_DIR", "ONNX2BURST_OPS_LIBRARY"):
        rows.append((var, os.environ.get(var, "(unset)")))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
    if not ok:
        click.secho("warning: the BurstIF kernel is not available; the standard-op fallback runs "
                    "(correct, slower)", fg="yellow", err=True)
