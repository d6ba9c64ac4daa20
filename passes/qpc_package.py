"""The Cloud AI 100 parts of a package: qconfig.json, and an ONNX Runtime view of the ONNX
handed to the compiler so the package can be validated where no AI 100 device is."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

QCONFIG = "qconfig.json"
SESSION = "session.json"


def write_onnx_session(out: Path) -> None:
    """session.json running model.onnx (dynamic shapes) once per specialization, on the CPU.

    Graph entries carry every symbol of their specialization, as compile_ort's do (the
    runtime reads full_batch_size and num_logits_to_keep from them).
    """
    from passes.onnx_files import data_files
    from passes.specializations import from_json

    shapes = from_json(json.loads((out / "specializations.json").read_text()))
    graphs = [{"file": "model.onnx", **shape} for shape in shapes]

    io = json.loads((out / "io.json").read_text())  # the compile stage copies it from the rewrite
    session = {"graphs": graphs, "io": io, "options": {"intra_op_num_threads": 0},
               "weights": data_files(out), "validation_target": "onnx",
               "note": "the ONNX handed to the AI 100 compiler, run by ONNX Runtime; qpc/ is the device program"}
    (out / SESSION).write_text(json.dumps(session, indent=2, sort_keys=True) + "\n")


def write_qconfig(out: Path, checkpoint: Path, config: Mapping[str, Any]) -> None:
    """qconfig.json as users of the reference library expect: HF config, transforms, compiler, SDK."""
    compile_info = json.loads((out / "compile.json").read_text()) if (out / "compile.json").is_file() else {}
    command = compile_info.get("command")
    if command is None and (out / "compile.sh").is_file():
        command = (out / "compile.sh").read_text().strip().splitlines()[-1]
    qconfig = {
        "huggingface_config": json.loads((checkpoint / "config.json").read_text()),
        "transforms": ["static_kv", *config["rewrite"]["rules"], "fp16_clip", "external_data_split"],
        "compiler": {"command": command, "options": config["hw"], "compile": config["compile"]},
        "sdk_versions": compile_info.get("compiler_version"),
        "qpc": "qpc/programqpc.bin" if (out / "qpc" / "programqpc.bin").is_file() else None,
    }
    (out / QCONFIG).write_text(json.dumps(qconfig, indent=2, sort_keys=True) + "\n")
