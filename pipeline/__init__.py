"""The engine: config, graph, keys, store, executor and the command-line entry points."""
