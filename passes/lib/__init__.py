"""Libraries the passes share: linking store files, and the ONNX graph folder (model.onnx + weights + io.json)."""
