"""Libraries the passes share: store files, the ONNX graph folder (model.onnx + weights + io.json), a module's weights into a graph, an HF model's decoder stack, torch pinned to one thread."""
