"""ONNX Runtime on the host CPU: fixed-shape graphs per specialization sharing one weights file."""
