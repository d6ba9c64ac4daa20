"""The Cloud AI 100 compile plan: compiler options, custom_io.yaml, mdp_ts_<N>.json and compile.sh (AI100.md)."""
from __future__ import annotations

import shlex
from typing import Any, Mapping

from passes.targets.ai100.sdk import sdk_default
from runtime import package_format as fmt

SPECIALIZATIONS = "specializations.json"
CUSTOM_IO = "custom_io.yaml"
SCRIPT = "compile.sh"
COMPILE_JSON = "compile.json"
NODE_PRECISION = "node_precision.yaml"
AUTO = "auto"
QPC_DIR = "qpc"
PROGRAM = "programqpc.bin"
# Options the plan sets itself: hw.extra_options may not set them again.
OWN_OPTIONS = ("aic_hw", "aic_hw_version", "m", "retained_state", "convert_to_fp16", "aic_num_cores",
               "mxfp6_matmul", "mos", "ols", "aic_enable_depth_first", "mdp_load_partition_config",
               "network_specialization_config", "custom_IO_list_file", "aic_binary_dir", "compile_only",
               "node_precision_info")


def extra_flags(extra: Mapping[str, Any]) -> list[str]:
    """hw.extra_options as compiler options: some_option=True -> -some-option, False -> omitted,
    another value -> -some-option=<value>; sorted by name."""
    flags = []
    for key in sorted(extra):
        value, flag = extra[key], "-" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False:
            flags.append(f"{flag}={value}")
    return flags


def compiler_options(params: Any, kv: bool = True) -> list[str]:
    """The compiler's options (AI100.md), with paths relative to the compile folder; without ``kv``
    (an encoder) no retained state and no custom IO list."""
    opts = ["-aic-hw", f"-aic-hw-version={params.hw_version}", "-m=model.onnx", *["-retained-state"] * kv,
            "-convert-to-fp16", f"-aic-num-cores={params.num_cores}"]
    if params.mxfp6_matmul:
        opts.append("-mxfp6-matmul")
    if params.mos is not None:
        opts.append(f"-mos={params.mos}")
    if params.ols is not None:
        opts.append(f"-ols={params.ols}")
    if params.aic_enable_depth_first:
        opts.append("-aic-enable-depth-first")
    if params.num_devices > 1:
        opts.append(f"-mdp-load-partition-config={mdp_file(params.num_devices)}")
    opts += [f"-network-specialization-config={SPECIALIZATIONS}", *[f"-custom-IO-list-file={CUSTOM_IO}"] * kv,
             f"-aic-binary-dir={QPC_DIR}"]
    if params.fp32_nodes:
        opts.append(f"-node-precision-info={NODE_PRECISION}")
    opts += extra_flags(params.extra_options)
    if params.compiler_kind == "qaic-exec":
        opts.append("-compile-only")
    return opts


def mdp_file(num_devices: int) -> str:
    return f"mdp_ts_{num_devices}.json"


def mdp_config(num_devices: int, num_cores: int) -> dict[str, Any]:
    """Tensor slicing over devices 0..N-1, num_cores each (AI100.md form)."""
    devices = list(range(num_devices))
    return {"connections": [{"devices": devices, "type": "p2p"}],
            "partitions": [{"name": "Partition0",
                            "devices": [{"deviceId": d, "numCores": num_cores} for d in devices]}]}


def custom_io_yaml(signature: fmt.Signature, precision: str) -> str:
    """One block per KV input (role past_kv, graph order), then one per its retained-state output
    (the reference library's order), all in ``precision``."""
    kv = [v for v in signature.inputs if v.role == fmt.PAST_KV]
    if not kv:
        raise RuntimeError(f"compile_ai100: the graph has no past_kv inputs (inputs: {[v.name for v in signature.inputs]})")
    try:
        retained = [signature.retained(v).name for v in kv]
    except KeyError as e:
        raise RuntimeError(f"compile_ai100: {e.args[0]}") from None
    names = [v.name for v in kv] + retained
    return "".join(f" - IOName: {n}\n   Precision: {precision}\n\n" for n in names)


def script_text(params: Any, kv: bool = True) -> str:
    """compile.sh: runs in its own folder, compiler from $QAIC_COMPILER or the SDK's path."""
    options = " ".join(shlex.quote(o) for o in compiler_options(params, kv))
    default = sdk_default(params.compiler_kind or "qaic-compile")
    return (
        "#!/bin/sh\n"
        "# Cloud AI 100 compile of model.onnx, written by the compile_ai100 pass (ai100-pipeline).\n"
        "# Copy this folder out of the read-only store (cp -rL <it> plan; chmod -R u+w plan), then: plan/compile.sh\n"
        "# It works in its own folder and writes qpc/programqpc.bin there.\n"
        f"# Compiler: $QAIC_COMPILER if set, else {default}.\n"
        "set -e\n"
        'cd "$(dirname "$0")"\n'
        f'exec "${{QAIC_COMPILER:-{default}}}" {options}\n'
    )


def node_precision_yaml(names: Any) -> str:
    """The node outputs kept in fp32, in the form -node-precision-info reads (AI100.md)."""
    return "FP32NodeInstanceNames:\n" + "".join(f" - {n}\n" for n in names)


def read_node_names(value: Any, key: str = "hw.fp32_nodes") -> tuple[str, ...] | str:
    """hw.fp32_nodes as names: ``none`` -> (), ``auto`` as it is (compile finds them), a list as it
    is, a path -> its FP32NodeInstanceNames (ValueError, one line, for anything else)."""
    from pathlib import Path

    if value is None or value == "none":
        return ()
    if value == AUTO:
        return AUTO
    if isinstance(value, (list, tuple)):
        if not all(isinstance(n, str) and n for n in value):
            raise ValueError(f"{key}: {list(value)!r} is not allowed; allowed: a list of node output names")
        return tuple(value)
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ValueError(f"{key}: {value!r} is not allowed; allowed: none, auto, a list of node output names, "
                         "or a YAML file with an FP32NodeInstanceNames list")
    import yaml

    try:
        names = (yaml.safe_load(path.read_text()) or {}).get("FP32NodeInstanceNames")
    except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as e:
        raise ValueError(f"{key}: {value!r} is not a YAML mapping with FP32NodeInstanceNames ({type(e).__name__})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{key}: {value!r} has no FP32NodeInstanceNames list of names")
    return tuple(names)
