"""The qnn target: Qualcomm's HTP (Hexagon NPU) through QNN, by onnxruntime-qnn's execution provider."""
