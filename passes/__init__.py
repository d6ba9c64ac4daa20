"""The passes. Each registers itself under a name (``pipeline.passes`` entry points in pyproject.toml).

    load/         any model source -> an HF checkpoint folder; cheap model facts
    transforms/   PyTorch module transforms (static KV cache)
    export.py     the module to ONNX with its IO signature
    rewrites/     ONNX graph rewrites
    targets/      one folder per target (ort, ai100): its hw schema and compile pass;
                  specializations.py plans the compiled shapes for both
    package.py    program + tokenizer + manifest (the runtime's package format)
    reference.py, validate.py   the original model's tokens, and the package checked against them
    lib/          files and ONNX graph folders, shared by the passes above
"""
