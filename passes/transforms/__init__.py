"""PyTorch transforms: in-memory rewrites of a loaded model before export."""
