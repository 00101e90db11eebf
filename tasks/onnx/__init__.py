"""ONNX: a PyTorch classifier as an ONNX graph, and ONNX Runtime sessions with one set of options."""
