#!/usr/bin/env python3
"""STAND-IN for Qualcomm's qaic-compile, used ONLY by the tests (the Cloud AI 100 SDK cannot
be installed here). It compiles nothing: it checks the command line and the files the
compile_ai100 pass hands the real compiler, then writes <aic-binary-dir>/programqpc.bin, a
small JSON describing what it was given.

Checked:
- options: the documented ones only (AI100.md), each ``-key`` or ``-key=value``; an unknown,
  repeated or malformed option (a value on a flag, a flag without its value, a non-integer
  core count) is an error: exit 2 and a message on stderr;
- -m: the ONNX loads (``onnx.load(path, load_external_data=False)``: onnx 1.23 rejects
  hard-linked external data) and every external data file it names exists and is big enough;
- -network-specialization-config: flat or named form; every key is a dynamic dimension name
  of some graph input; every value a positive integer (as a string);
- -custom-IO-list-file: a YAML list of {IOName, Precision}; every IOName a graph input or
  output, Precision float16 | mxint8 | bfloat16;
- -mdp-load-partition-config: devices 0..N-1 connected, each with numCores = -aic-num-cores.

Test knobs (environment): STANDIN_QAIC_FAIL=1: exit 3 with an error on stderr;
STANDIN_QAIC_SLEEP=<s>: sleep first, with a child process sleeping too (a process group to
kill); STANDIN_QAIC_PIDFILE=<path>: write the pids of both there (to check none is left).
Needs a Python with onnx and PyYAML (the project's venv on PATH).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

FLAGS = {"aic-hw", "retained-state", "convert-to-fp16", "mxfp6-matmul", "aic-enable-depth-first",
         "allow-mxint8-mdp-io", "sub-functions", "compile-only"}
VALUED = {"aic-hw-version": str, "m": str, "aic-num-cores": int, "mos": int, "ols": int,
          "mdp-load-partition-config": str, "network-specialization-config": str,
          "custom-IO-list-file": str, "aic-binary-dir": str, "node-precision-info": str}
REQUIRED = ("aic-hw", "m", "aic-binary-dir")
PRECISIONS = {"float16", "mxint8", "bfloat16"}


class Bad(Exception):
    pass


def parse(argv: list[str]) -> dict[str, object]:
    opts: dict[str, object] = {}
    for arg in argv:
        if not arg.startswith("-") or arg.startswith("--") or len(arg) < 2:
            raise Bad(f"malformed argument {arg!r} (expected -key or -key=value)")
        key, eq, value = arg[1:].partition("=")
        if key in opts:
            raise Bad(f"option -{key} given twice")
        if key in FLAGS:
            if eq:
                raise Bad(f"option -{key} takes no value (got {arg!r})")
            opts[key] = True
        elif key in VALUED:
            if not eq or value == "":
                raise Bad(f"option -{key} needs a value: -{key}=<value>")
            try:
                opts[key] = VALUED[key](value)
            except ValueError:
                raise Bad(f"option -{key}: {value!r} is not an integer") from None
            if VALUED[key] is int and opts[key] < 1:
                raise Bad(f"option -{key}: {value!r} must be >= 1")
        else:
            raise Bad(f"unknown option -{key}")
    for key in REQUIRED:
        if key not in opts:
            raise Bad(f"missing required option -{key}")
    return opts


def existing(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise Bad(f"{what}: {path} does not exist")
    return p


def check_model(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(input names, output names, dynamic dimension names of the inputs)."""
    import onnx
    from onnx import external_data_helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise Bad(f"-m: {path} does not load: {type(e).__name__}: {e}") from None
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            data = path.parent / info.location
            if not data.is_file():
                raise Bad(f"-m: external data file {info.location} of {tensor.name} does not exist")
            end = (info.offset or 0) + (info.length or 0)
            if data.stat().st_size < end:
                raise Bad(f"-m: {info.location} is shorter ({data.stat().st_size} B) than {tensor.name} needs ({end} B)")
    inputs = {v.name for v in model.graph.input}
    outputs = {v.name for v in model.graph.output}
    dims = {d.dim_param for v in model.graph.input for d in v.type.tensor_type.shape.dim if d.dim_param}
    return inputs, outputs, dims


def check_specializations(path: Path, dims: set[str]) -> list[dict[str, str]]:
    try:
        entries = json.loads(path.read_text())["specializations"]
    except (ValueError, KeyError, TypeError) as e:
        raise Bad(f"-network-specialization-config: {path} is not {{\"specializations\": [...]}}: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise Bad("-network-specialization-config: no specializations")
    shapes = []
    for entry in entries:
        symbols = entry.get("symbols") if "name" in entry else entry
        if not isinstance(symbols, dict) or not symbols:
            raise Bad(f"-network-specialization-config: bad entry {entry!r}")
        for key, value in symbols.items():
            if key not in dims:
                raise Bad(f"-network-specialization-config: {key!r} is not a dynamic dimension of the graph's inputs "
                          f"({sorted(dims)})")
            if not isinstance(value, str) or not value.isdigit() or int(value) < 1:
                raise Bad(f"-network-specialization-config: {key}={value!r} is not a positive integer string")
        shapes.append(symbols)
    return shapes


def check_custom_io(path: Path, names: set[str]) -> dict[str, str]:
    import yaml

    try:
        entries = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise Bad(f"-custom-IO-list-file: {path} is not YAML: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise Bad("-custom-IO-list-file: expected a non-empty list of {IOName, Precision}")
    out = {}
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"IOName", "Precision"}:
            raise Bad(f"-custom-IO-list-file: bad entry {entry!r}")
        if entry["IOName"] not in names:
            raise Bad(f"-custom-IO-list-file: {entry['IOName']!r} is not a graph input or output")
        if entry["Precision"] not in PRECISIONS:
            raise Bad(f"-custom-IO-list-file: precision {entry['Precision']!r} of {entry['IOName']}")
        out[entry["IOName"]] = entry["Precision"]
    return out


def check_mdp(path: Path, num_cores: int) -> int:
    try:
        cfg = json.loads(path.read_text())
        connected = cfg["connections"][0]["devices"]
        devices = cfg["partitions"][0]["devices"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise Bad(f"-mdp-load-partition-config: {path} has no connections/partitions: {e}") from None
    ids = [d.get("deviceId") for d in devices]
    if ids != list(range(len(ids))) or connected != ids or len(ids) < 2:
        raise Bad(f"-mdp-load-partition-config: devices {ids} vs connections {connected}")
    cores = {d.get("numCores") for d in devices}
    if cores != {num_cores}:
        raise Bad(f"-mdp-load-partition-config: numCores {sorted(cores, key=str)} != -aic-num-cores={num_cores}")
    return len(ids)


def check_node_precision(path: Path, model: str) -> list[str]:
    """-node-precision-info: YAML with an FP32NodeInstanceNames list of node outputs of the model."""
    import onnx
    import yaml

    try:
        names = yaml.safe_load(path.read_text())["FP32NodeInstanceNames"]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise Bad(f"-node-precision-info: {path} has no FP32NodeInstanceNames list: {e}") from None
    produced = {o for node in onnx.load(model, load_external_data=False).graph.node for o in node.output}
    unknown = [n for n in names if n not in produced]
    if not isinstance(names, list) or not names or unknown:
        raise Bad(f"-node-precision-info: {unknown[:1] or names!r} is not a node output of the model")
    return names


def main(argv: list[str]) -> int:
    try:
        opts = parse(argv)
    except Bad as e:
        print(f"standin-qaic-compile: error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("STANDIN_QAIC_SLEEP"):
        seconds = float(os.environ["STANDIN_QAIC_SLEEP"])
        child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
        if os.environ.get("STANDIN_QAIC_PIDFILE"):
            Path(os.environ["STANDIN_QAIC_PIDFILE"]).write_text(f"{os.getpid()} {child.pid}\n")
        print(f"standin-qaic-compile: sleeping {seconds} s", flush=True)
        time.sleep(seconds)
        child.wait()
    if os.environ.get("STANDIN_QAIC_FAIL") == "1":
        print("standin-qaic-compile: checking the graph", flush=True)
        print("standin-qaic-compile: error: STANDIN_QAIC_FAIL=1 (a simulated compiler failure)", file=sys.stderr)
        return 3
    try:
        inputs, outputs, dims = check_model(existing(str(opts["m"]), "-m"))
        described: dict[str, object] = {"standin": True, "argv": argv, "inputs": sorted(inputs),
                                        "outputs": sorted(outputs)}
        if "network-specialization-config" in opts:
            path = existing(str(opts["network-specialization-config"]), "-network-specialization-config")
            described["specializations"] = check_specializations(path, dims)
        if "custom-IO-list-file" in opts:
            path = existing(str(opts["custom-IO-list-file"]), "-custom-IO-list-file")
            described["custom_io"] = check_custom_io(path, inputs | outputs)
        if "node-precision-info" in opts:
            path = existing(str(opts["node-precision-info"]), "-node-precision-info")
            described["fp32_nodes"] = check_node_precision(path, str(opts["m"]))
        if "mdp-load-partition-config" in opts:
            if "aic-num-cores" not in opts:
                raise Bad("-mdp-load-partition-config needs -aic-num-cores")
            path = existing(str(opts["mdp-load-partition-config"]), "-mdp-load-partition-config")
            described["devices"] = check_mdp(path, int(opts["aic-num-cores"]))
    except Bad as e:
        print(f"standin-qaic-compile: error: {e}", file=sys.stderr)
        return 2
    out = Path(str(opts["aic-binary-dir"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "programqpc.bin").write_text(json.dumps(described, indent=1, sort_keys=True) + "\n")
    print(f"standin-qaic-compile: wrote {out / 'programqpc.bin'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
