"""Tuning the SNN: one module per concern, imported directly (no eager imports here).

- ``thresholds``: per-channel threshold fit (§4): ``activation_stats`` (pass 1),
  ``search_thresholds`` (pass 2; several (psi, tau) settings per neuron in one pass),
  ``ThresholdSearch`` (the streaming collector), ``quantize``.
- ``bias``: layer-wise bias calibration (§5): ``calibrate_biases``.
- ``sensitivity``, ``energy``, ``pareto``, ``search``: BSR/SSC (§6-§8).

The stages are driven by ``onnx2burst.convert.Converter``.
"""
