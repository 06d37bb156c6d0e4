"""Names of the BurstIF operator (docs/method.md §2), shared by the kernel, the function and the rewriter."""
DOMAIN = "onnx2burst"
OP_TYPE = "BurstIF"
OP_VERSION = 1
MIN_OPSET = 13  # the fallback body uses ReduceSum/Reshape/Clip forms of opset 13

INPUTS = ("X", "vth")
OUTPUTS = ("Y", "spikes")
ATTRIBUTES = {"T": "int >= 1", "psi": "int >= 1", "tau": "float > 0 (default 1.0)",
              "alpha": "floats >= 0, 1 or C values (default: absent = 0, no negative spikes)"}

#: the session-only one-timestep form of BurstIF (streaming models with the kernel):
#: ``Y, spikes, U_next = BurstIFStep(X, vth, U)``, attributes T, psi, tau as BurstIF's
STEP_OP_TYPE = "BurstIFStep"
