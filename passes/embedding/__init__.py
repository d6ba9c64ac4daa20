"""Embedding models: an encoder with its pooling (and normalization) as one graph, checked against sentence-transformers."""
