"""Conversion-time fitting, driven by ``onnx2burst.convert.Converter``; one module per concern,
imported directly (no eager imports here):

- ``thresholds``: per-channel threshold fit (docs/method.md §4): ``activation_stats`` (pass 1),
  ``search_thresholds`` (pass 2; several (psi, tau) settings per neuron in one pass),
  ``ThresholdSearch`` (the streaming collector), ``quantize``;
- ``bias``: layer-wise bias calibration (§5): ``calibrate_biases``.

The search over per-layer psi and tau (BSR/SSC) is ``onnx2burst.search``.
"""
