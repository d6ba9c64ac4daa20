"""The Cloud AI 100 part of a package: qconfig.json, as users of the reference library expect it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from passes.targets.ai100.plan import COMPILE_JSON, PROGRAM, QPC_DIR, SCRIPT

QCONFIG = "qconfig.json"
TRANSFORMS = {"causal_lm": "static_kv", "embedding": "embedding"}  # by package kind


def write_qconfig(out: Path, checkpoint: Path, program: Any, rewrite_rules: Sequence[str]) -> None:
    """qconfig.json: HF config, transforms applied, compiler command and options, SDK versions."""
    compile_info = json.loads((out / COMPILE_JSON).read_text()) if (out / COMPILE_JSON).is_file() else {}
    command = compile_info.get("command")
    if command is None and (out / SCRIPT).is_file():
        command = (out / SCRIPT).read_text().strip().splitlines()[-1]
    qconfig = {
        "huggingface_config": json.loads((checkpoint / "config.json").read_text()),
        "transforms": [TRANSFORMS[program.signature.kind], *rewrite_rules, "fp16_clip", "external_data_split"],
        "compiler": {"command": command, "options": program.build.get("hw", {}), "compile": program.build.get("compile", {})},
        "sdk_versions": compile_info.get("compiler_version"),
        "qpc": f"{QPC_DIR}/{PROGRAM}" if (out / QPC_DIR / PROGRAM).is_file() else None,
    }
    (out / QCONFIG).write_text(json.dumps(qconfig, indent=2, sort_keys=True) + "\n")
