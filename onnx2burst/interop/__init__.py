"""Using an SNN file elsewhere: portable ONNX (standard ops only), PyTorch, NIR."""
