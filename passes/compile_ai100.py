"""Pass `compile_ai100`: the rewritten ONNX compiled for Qualcomm Cloud AI 100 (a QPC).

Input ``onnx``: the rewrite stage's tree (model.onnx + model.onnx.data + io.json). Output:

```
model.onnx + data files   the ONNX handed to the compiler: fp32 constants clipped to the fp16
                          range (-inf kept), weights in external files of at most 10 GiB each
io.json                   the graph's inputs/outputs and dims (from the input tree)
specializations.json      passes.specializations.plan, in hw.specialization_format
custom_io.yaml            KV inputs and their _RetainedState outputs in hw.kv_cache_dtype
mdp_ts_<N>.json           hw.num_devices > 1: tensor slicing over N devices
compile.sh                the exact compiler command (POSIX sh, executable; `./compile.sh` in a copy of
                          this folder writes qpc/ there; QAIC_COMPILER=<path> picks the compiler)
compile.json              that command, the compiler kind and version (read by the package)
qpc/programqpc.bin        the program (absent with compile.dry_run=true)
```

The compiler (Apps SDK, see AI100.md) is found by the ``resolve`` hook: hw.compiler, else
/opt/qti-aic/exec/qaic-compile, else /opt/qti-aic/exec/qaic-exec (older SDKs, with
-compile-only). Its path stays out of the key; its version (the SDK's versions/*.xml, else the
binary's sha256) enters it. Without a compiler the ``check`` hook stops the run before anything
is built, unless compile.dry_run=true (everything above but qpc/).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from passes import specializations as spz
from pipeline.pass_api import Needs, StageFailure, UserError, cfg_field, hook, register_pass

SDK_ROOT = Path("/opt/qti-aic")
SDK_COMPILERS = (SDK_ROOT / "exec" / "qaic-compile", SDK_ROOT / "exec" / "qaic-exec")
KV_DTYPES = ("float16", "mxint8", "bfloat16")
MAX_CORES = 16
# External data files handed to the compiler: each at most this big (the reference library's
# chunk size; each tensor's protobuf stays far below the 2 GB limit since the data is external).
MAX_FILE_BYTES = 10 * 2**30
SPECIALIZATIONS = "specializations.json"
CUSTOM_IO = "custom_io.yaml"
SCRIPT = "compile.sh"
COMPILE_JSON = "compile.json"
QPC_DIR = "qpc"
PROGRAM = "programqpc.bin"
# Options the pass sets itself: hw.extra_options may not set them again.
OWN_OPTIONS = ("aic_hw", "aic_hw_version", "m", "retained_state", "convert_to_fp16", "aic_num_cores",
               "mxfp6_matmul", "mos", "ols", "aic_enable_depth_first", "mdp_load_partition_config",
               "network_specialization_config", "custom_IO_list_file", "aic_binary_dir", "compile_only")
TAIL_LINES = 50
STDERR_TAIL_LINES = 20


@dataclass(frozen=True)
class CompileAi100Params:
    compiler: Optional[str] = cfg_field("hw.compiler", None, kind="note")  # its version enters the key
    num_cores: int = cfg_field("hw.num_cores", 16)
    num_devices: int = cfg_field("hw.num_devices", 1)
    hw_version: str = cfg_field("hw.hw_version", "ai100")
    mxfp6_matmul: bool = cfg_field("hw.mxfp6_matmul", False)
    kv_cache_dtype: str = cfg_field("hw.kv_cache_dtype", "float16")
    mos: Optional[int] = cfg_field("hw.mos", None)
    ols: Optional[int] = cfg_field("hw.ols", None)
    aic_enable_depth_first: bool = cfg_field("hw.aic_enable_depth_first", False)
    specialization_format: str = cfg_field("hw.specialization_format", "flat")
    extra_options: dict = cfg_field("hw.extra_options", {})
    compile_timeout_s: Optional[float] = cfg_field("hw.compile_timeout_s", None, kind="note")
    batch_size: int = cfg_field("compile.batch_size", 1)
    prefill_seq_len: int = cfg_field("compile.prefill_seq_len", 32)
    ctx_len: int = cfg_field("compile.ctx_len", 256)
    full_batch_size: Any = cfg_field("compile.full_batch_size", None)
    num_speculative_tokens: Any = cfg_field("compile.num_speculative_tokens", None)
    dry_run: bool = cfg_field("compile.dry_run", False)
    # Filled by the resolve hook (no config path: they enter the key under these names).
    compiler_version: str = ""
    compiler_kind: str = ""      # qaic-compile | qaic-exec (needs -compile-only)


# ---------------------------------------------------------------- the compiler on this machine
def compiler_candidates(configured: Optional[str]) -> list[Path]:
    return [Path(configured).expanduser().absolute()] if configured else list(SDK_COMPILERS)


def find_compiler(configured: Optional[str]) -> Optional[Path]:
    """hw.compiler if set, else the SDK's qaic-compile, then qaic-exec: the first executable file."""
    for path in compiler_candidates(configured):
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def compiler_kind(path: Optional[Path]) -> str:
    return "qaic-exec" if path is not None and path.name.startswith("qaic-exec") else "qaic-compile"


def sdk_default(kind: str) -> str:
    """The compiler path compile.sh falls back to (never a local override: the script is portable)."""
    return str(SDK_ROOT / "exec" / kind)


def compiler_version(path: Path) -> str:
    """The SDK's versions (apps.xml, platform.xml next to the compiler's exec/ folder), else
    ``sha256:<digest of the binary>``. Never raises."""
    roots = []
    for p in (path, path.resolve()):
        if p.parent.name == "exec" and p.parent.parent not in roots:
            roots.append(p.parent.parent)
    for root in roots:
        found = [f"{name} {v}" for name in ("apps", "platform")
                 if (v := _xml_version(root / "versions" / f"{name}.xml"))]
        if found:
            return "; ".join(found)
    try:
        from passes.files import sha256

        return "sha256:" + sha256(path)
    except OSError as e:
        return f"unknown ({type(e).__name__} reading {path.name})"


def _xml_version(path: Path) -> Optional[str]:
    """base_version[.build_id] of an SDK versions/*.xml, or None."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    base = (root.findtext(".//base_version") or "").strip()
    # <build_id> holding the number (it may also be the name of the element around both)
    build = next((e.text.strip() for e in root.iter("build_id") if len(e) == 0 and (e.text or "").strip()), "")
    if not base:
        return None
    return f"{base}.{build}" if build else base


# ---------------------------------------------------------------- hooks
def _bad(key: str, value: Any, allowed: str) -> UserError:
    return UserError(f"{key}: {value!r} is not allowed; allowed: {allowed}")


def plan_of(params: Any) -> list[dict[str, int]]:
    return spz.plan(params.batch_size, params.prefill_seq_len, params.ctx_len,
                    params.full_batch_size, params.num_speculative_tokens)


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


def compiler_options(params: CompileAi100Params) -> list[str]:
    """The compiler's options (AI100.md), with paths relative to the compile folder."""
    opts = ["-aic-hw", f"-aic-hw-version={params.hw_version}", "-m=model.onnx", "-retained-state",
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
    opts += [f"-network-specialization-config={SPECIALIZATIONS}", f"-custom-IO-list-file={CUSTOM_IO}",
             f"-aic-binary-dir={QPC_DIR}"]
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


def custom_io_yaml(io: Mapping[str, Any], precision: str) -> str:
    """One block per KV input (past_key.<i>, past_value.<i>, graph order), then one per its
    _RetainedState output (the reference library's order), all in ``precision``."""
    kv = [v["name"] for v in io["inputs"] if re.fullmatch(r"past_(key|value)\.\d+", v["name"])]
    outputs = {v["name"] for v in io["outputs"]}
    if not kv:
        raise RuntimeError(f"compile_ai100: the graph has no past_key.<i>/past_value.<i> inputs "
                           f"(inputs: {[v['name'] for v in io['inputs']]})")
    missing = [f"{n}_RetainedState" for n in kv if f"{n}_RetainedState" not in outputs]
    if missing:
        raise RuntimeError(f"compile_ai100: KV inputs without their retained-state outputs: {missing}")
    names = kv + [f"{n}_RetainedState" for n in kv]
    return "".join(f" - IOName: {n}\n   Precision: {precision}\n\n" for n in names)


def script_text(params: CompileAi100Params) -> str:
    """compile.sh: runs in its own folder, compiler from $QAIC_COMPILER or the SDK's path."""
    options = " ".join(shlex.quote(o) for o in compiler_options(params))
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


# ---------------------------------------------------------------- the pass
@register_pass("compile_ai100", params=CompileAi100Params, deps=("onnx", "onnx_ir"), materialize=True,
               code=("passes.onnx_files", "passes.files", "passes.specializations", "passes.rewrites.fp16_clip"),
               needs=Needs(modules=("onnx", "onnx_ir"), weight_copies=1))
def compile_ai100(inputs: Mapping[str, Any], params: CompileAi100Params, out: Path) -> dict[str, Any]:
    from passes import onnx_files
    from passes.files import link_or_copy
    from passes.rewrites.fp16_clip import clip_fp16

    src = Path(inputs["onnx"])
    io = onnx_files.read_json(src / onnx_files.IO)
    spz.check_variant_inputs(io, params.full_batch_size, params.num_speculative_tokens, "compile_ai100")
    specs = plan_of(params)

    # The ONNX handed to the compiler: fp16-safe constants, weights in bounded external files.
    model = onnx_files.load_ir(src)
    clipped = clip_fp16(model)
    onnx_files.save_ir(model, out, max_file_bytes=MAX_FILE_BYTES)
    del model
    link_or_copy(src / onnx_files.IO, out / onnx_files.IO)

    onnx_files.write_json(out / SPECIALIZATIONS, spz.to_json(specs, params.specialization_format))
    (out / CUSTOM_IO).write_text(custom_io_yaml(io, params.kv_cache_dtype))
    if params.num_devices > 1:
        onnx_files.write_json(out / mdp_file(params.num_devices), mdp_config(params.num_devices, params.num_cores))
    (out / SCRIPT).write_text(script_text(params))
    (out / SCRIPT).chmod(0o755)  # the store keeps the execute bit
    options = compiler_options(params)
    portable = shlex.join([sdk_default(params.compiler_kind or "qaic-compile"), *options])
    onnx_files.write_json(out / COMPILE_JSON, {
        "command": portable, "options": options, "compiler_kind": params.compiler_kind,
        "compiler_version": params.compiler_version, "dry_run": params.dry_run,
        "specializations": specs, "data_files": onnx_files.data_files(out),
    })
    result = {"command": portable, "seconds": 0.0, "compiler_version": params.compiler_version,
              "dry_run": params.dry_run, "output_tail": "", "fp16_clipped": clipped}
    if params.dry_run:
        return result
    argv = [str(params.compiler), *options]
    return {**result, **run_compiler(argv, out, params.compiler_kind, params.compile_timeout_s)}


def run_compiler(argv: list[str], cwd: Path, name: str, timeout_s: Optional[float]) -> dict[str, Any]:
    """Run the compiler in cwd (the caller's environment), stream its output line by line, keep
    its tail; a timeout kills its whole process group. StageFailure unless qpc/programqpc.bin."""
    import collections
    import subprocess
    import sys
    import threading
    import time

    command = shlex.join(argv)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    err_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    lock = threading.Lock()

    def pump(stream: Any, is_err: bool) -> None:
        for raw in stream:
            line = raw.rstrip("\r\n")
            with lock:
                tail.append(line)
                if is_err:
                    err_tail.append(line)
                print(f"  {name}: {line}", file=sys.stderr if is_err else sys.stdout, flush=True)
        stream.close()

    start = time.monotonic()
    print(f"  {name}: {command}", flush=True)
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    except OSError as e:
        raise StageFailure(f"compile: cannot start {name}: {type(e).__name__}: {e}: {command}",
                           {"command": command}) from e
    pumps = [threading.Thread(target=pump, args=(proc.stdout, False), daemon=True),
             threading.Thread(target=pump, args=(proc.stderr, True), daemon=True)]
    for t in pumps:
        t.start()

    def finish() -> dict[str, Any]:
        for t in pumps:
            t.join(timeout=5)
        with lock:
            return {"command": command, "seconds": round(time.monotonic() - start, 3),
                    "output_tail": "\n".join(tail)[-8000:], "stderr_tail": "\n".join(err_tail)}

    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        info = finish()
        raise StageFailure(f"compile: {name} timed out after {timeout_s:g} s: {command}",
                           {**info, "timeout_s": timeout_s}) from None
    except BaseException:  # interrupted: leave no compiler behind
        _kill_group(proc)
        raise
    info = finish()
    if code != 0:
        raise StageFailure(f"compile: {name} failed with exit code {code}: {command}\n{info['stderr_tail']}",
                           {**info, "exit_code": code})
    if not (cwd / QPC_DIR / PROGRAM).is_file():
        raise StageFailure(f"compile: {name} exited 0 but wrote no {QPC_DIR}/{PROGRAM}: {command}",
                           {**info, "exit_code": code})
    return {k: v for k, v in info.items() if k != "stderr_tail"}


def _kill_group(proc: Any, grace_s: float = 5.0) -> None:
    """SIGTERM the compiler's process group, SIGKILL what is left after grace_s; reap the leader."""
    import signal
    import subprocess

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        if sig == signal.SIGTERM:
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
    proc.wait()


# ---------------------------------------------------------------- hooks
@hook("compile_ai100", "check")
def check(params: CompileAi100Params) -> None:
    """Bad values and a missing compiler: one line each, exit 2, before anything runs."""
    p = params
    if p.kv_cache_dtype not in KV_DTYPES:
        raise _bad("hw.kv_cache_dtype", p.kv_cache_dtype, " | ".join(KV_DTYPES))
    if p.specialization_format not in spz.FORMATS:
        raise _bad("hw.specialization_format", p.specialization_format, " | ".join(spz.FORMATS))
    if not isinstance(p.num_devices, int) or p.num_devices < 1:
        raise _bad("hw.num_devices", p.num_devices, "an integer >= 1")
    if not isinstance(p.num_cores, int) or not 1 <= p.num_cores <= MAX_CORES:
        raise _bad("hw.num_cores", p.num_cores, f"1..{MAX_CORES} (cores of one Cloud AI 100 device)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(p.hw_version)):
        raise _bad("hw.hw_version", p.hw_version, "a hardware version like ai100, ai200 or 2.0")
    for key in ("mos", "ols"):
        value = getattr(p, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise _bad(f"hw.{key}", value, "an integer >= 1, or null")
    if p.compile_timeout_s is not None and not p.compile_timeout_s > 0:
        raise _bad("hw.compile_timeout_s", p.compile_timeout_s, "a number of seconds > 0, or null (no limit)")
    for key, value in dict(p.extra_options).items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key):
            raise _bad("hw.extra_options", key, "option names that are identifiers (some_option: true -> -some-option)")
        if key in OWN_OPTIONS:
            raise _bad("hw.extra_options", key, f"an option the pass does not set itself (it sets -{key.replace('_', '-')} "
                       "from its own hw./compile. key)")
        if not isinstance(value, (bool, int, float, str)):
            raise _bad(f"hw.extra_options.{key}", value, "true, false, a number or a string")
    try:
        plan_of(p)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not p.dry_run and find_compiler(p.compiler) is None:
        looked = ", ".join(str(c) for c in compiler_candidates(p.compiler))
        raise UserError(f"hw.compiler: no Cloud AI 100 compiler found (looked for {looked}); allowed: "
                        "hw.compiler=<path to qaic-compile>, or compile.dry_run=true to write the compile plan only")


@hook("compile_ai100", "resolve")
def resolve(params: CompileAi100Params) -> CompileAi100Params:
    """The compiler's path (a note) and its kind and version (in the key); "none" with dry_run."""
    path = find_compiler(params.compiler)
    version = "none" if params.dry_run or path is None else compiler_version(path)
    named = path or (Path(params.compiler) if params.compiler else None)
    return dataclasses.replace(params, compiler=str(path) if path else params.compiler,
                               compiler_version=version, compiler_kind=compiler_kind(named))
