"""Pass `compile_ai100`: the rewritten ONNX compiled for Qualcomm Cloud AI 100 (a QPC).

Input ``onnx``: the rewrite stage's tree (model.onnx + model.onnx.data + io.json). Output:

```
model.onnx + data files   the ONNX handed to the compiler: fp32 constants clipped to the fp16
                          range (-inf kept), weights in external files of at most 10 GiB each
io.json                   the graph's IO signature (from the input tree)
specializations.json      passes.targets.specializations, in hw.specialization_format
custom_io.yaml            KV inputs and their retained-state outputs in hw.kv_cache_dtype
node_precision.yaml       hw.fp32_nodes: the node outputs kept in fp32 (-node-precision-info)
mdp_ts_<N>.json           hw.num_devices > 1: tensor slicing over N devices
compile.sh                the exact compiler command (POSIX sh, executable; `./compile.sh` in a copy of
                          this folder writes qpc/ there; QAIC_COMPILER=<path> picks the compiler)
compile.json              that command, the compiler kind and version (read by the package)
program.json              the program (runtime.package_format.Program): qpc/, and model.onnx as
                          its ONNX view, which ONNX Runtime runs where no device is
qpc/programqpc.bin        the program (absent with compile.dry_run=true)
```

The compiler (Apps SDK, see AI100.md) is found by the ``resolve`` hook (sdk.py): hw.compiler,
else /opt/qti-aic/exec/qaic-compile, else /opt/qti-aic/exec/qaic-exec (older SDKs, with
-compile-only). Its path stays out of the key; its version enters it. Without a compiler the
``check`` hook stops the run before anything is built, unless compile.dry_run=true
(everything above but qpc/). The ai100 target's hw schema and plugin are in target.py.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from passes.targets import specializations as spz
from passes.targets.ai100.plan import (
    AUTO, COMPILE_JSON, CUSTOM_IO, NODE_PRECISION, OWN_OPTIONS, QPC_DIR, SCRIPT, SPECIALIZATIONS, compiler_options,
    custom_io_yaml, mdp_config, mdp_file, node_precision_yaml, read_node_names, script_text,
)
from passes.targets.ai100.sdk import compiler_candidates, compiler_kind, compiler_version, find_compiler, sdk_default
from passes.targets.ai100.target import Ai100Hw
from passes.targets.shapes import ShapeParams
from pipeline.pass_api import not_allowed, REQUIRED, Needs, UserError, cfg_field, config_of, config_schema, hook, register_pass

TARGET = Ai100Hw.target  # the program's target: its session opens the package
MAX_CORES = 16
# External data files handed to the compiler: each at most this big (the reference library's
# chunk size; each tensor's protobuf stays far below the 2 GB limit since the data is external).
MAX_FILE_BYTES = 10 * 2**30


@config_schema("compile")
@dataclass
class PlanOnly:
    """compile.dry_run: write the compile plan (compile.sh and its inputs), run no compiler."""

    dry_run: bool = False  # write the compile plan (compile.sh and its inputs), run no compiler


@dataclass(frozen=True)
class CompileAi100Params(ShapeParams):
    compiler: Optional[str] = cfg_field(Ai100Hw, "compiler", kind="note")  # its version enters the key
    num_cores: int = cfg_field(Ai100Hw, "num_cores")
    num_devices: int = cfg_field(Ai100Hw, "num_devices")
    hw_version: str = cfg_field(Ai100Hw, "hw_version")
    mxfp6_matmul: bool = cfg_field(Ai100Hw, "mxfp6_matmul")
    kv_cache_dtype: str = cfg_field(Ai100Hw, "kv_cache_dtype")
    fp32_nodes: Any = cfg_field(Ai100Hw, "fp32_nodes")  # resolved to a tuple of names (a file's by content), or auto
    # hw.fp32_nodes=auto searches the evaluation text of validate (else both are blanked out of the key)
    eval_text: Optional[str] = cfg_field("validate.eval_text", REQUIRED, kind="note")
    eval_tokens: int = cfg_field("validate.eval_tokens", REQUIRED)
    eval_text_sha256: str = ""
    mos: Optional[int] = cfg_field(Ai100Hw, "mos")
    ols: Optional[int] = cfg_field(Ai100Hw, "ols")
    aic_enable_depth_first: bool = cfg_field(Ai100Hw, "aic_enable_depth_first")
    specialization_format: str = cfg_field(Ai100Hw, "specialization_format")
    extra_options: dict = cfg_field(Ai100Hw, "extra_options")
    compile_timeout_s: Optional[float] = cfg_field(Ai100Hw, "compile_timeout_s", kind="note")
    dry_run: bool = cfg_field(PlanOnly, "dry_run")
    # Filled by the resolve hook (no config path: they enter the key under these names).
    compiler_version: str = ""
    compiler_kind: str = ""      # qaic-compile | qaic-exec (needs -compile-only)


# ---------------------------------------------------------------- the pass
@register_pass("compile_ai100", params=CompileAi100Params, deps=("onnx", "onnx_ir"), materialize=True,
               needs=Needs(modules=("onnx", "onnx_ir"), weight_copies=1))
def compile_ai100(inputs: Mapping[str, Any], params: CompileAi100Params, out: Path) -> dict[str, Any]:
    from passes.lib import onnx_files
    from passes.lib.files import link_or_copy
    from passes.rewrites.fp16_clip import clip_fp16
    from passes.targets.ai100.compiler import run_compiler
    from runtime import package_format as fmt

    src = Path(inputs["onnx"])
    signature, specs = spz.for_graph(src, params, "compile_ai100")
    kv = signature.kind == fmt.CAUSAL_LM  # an encoder has no KV cache: no retained state, no custom IO

    # The ONNX handed to the compiler: fp16-safe constants, weights in bounded external files.
    model = onnx_files.load_ir(src)
    clipped = clip_fp16(model)
    found = None
    if params.fp32_nodes == AUTO:  # the node outputs that leave fp16's range on the evaluation text
        if "checkpoint" not in inputs or not kv:
            raise UserError("hw.fp32_nodes: 'auto' is not allowed in this pipeline; allowed: none, a list of node "
                            "output names or a file (auto needs a causal LM stage with a checkpoint input)")
        found = _find_fp32_nodes(model, signature, specs, Path(inputs["checkpoint"]), params, out)
        params = dataclasses.replace(params, fp32_nodes=tuple(found["names"]))
    if params.fp32_nodes:
        produced = {v.name for node in model.graph for v in node.outputs}
        unknown = [n for n in params.fp32_nodes if n not in produced]
        if unknown:
            raise UserError(f"hw.fp32_nodes: {unknown[0]!r} is not allowed; allowed: names of node outputs of the "
                            f"graph ({len(unknown)} of {len(params.fp32_nodes)} not found)")
        (out / NODE_PRECISION).write_text(node_precision_yaml(params.fp32_nodes))
    onnx_files.save_ir(model, out, max_file_bytes=MAX_FILE_BYTES)
    del model
    link_or_copy(src / fmt.SIGNATURE, out / fmt.SIGNATURE)

    fmt.write_json(out / SPECIALIZATIONS, spz.to_json(specs, params.specialization_format))
    if kv:
        (out / CUSTOM_IO).write_text(custom_io_yaml(signature, params.kv_cache_dtype))
    if params.num_devices > 1:
        fmt.write_json(out / mdp_file(params.num_devices), mdp_config(params.num_devices, params.num_cores))
    (out / SCRIPT).write_text(script_text(params, kv))
    (out / SCRIPT).chmod(0o755)  # the store keeps the execute bit
    options = compiler_options(params, kv)
    portable = shlex.join([sdk_default(params.compiler_kind or "qaic-compile"), *options])
    data_files = onnx_files.data_files(out)
    fmt.write_json(out / COMPILE_JSON, {
        "command": portable, "options": options, "compiler_kind": params.compiler_kind,
        "compiler_version": params.compiler_version, "dry_run": params.dry_run,
        "specializations": [dict(s.symbols) for s in specs], "data_files": data_files,
    })
    # The device program, and the ONNX handed to the compiler as its view for ONNX Runtime (one
    # dynamic graph serves every specialization), so the package validates where no device is.
    build = config_of(params)
    build["hw"].update(target=TARGET, compiler_kind=params.compiler_kind, compiler_version=params.compiler_version)
    fmt.write_program(out, fmt.Program(
        TARGET, signature, specs, graphs={s.name: onnx_files.MODEL for s in specs}, weights=tuple(data_files),
        options={"intra_op_num_threads": 0}, binary=QPC_DIR, validation_target="onnx", build=build))
    result = {"command": portable, "seconds": 0.0, "compiler_version": params.compiler_version,
              "dry_run": params.dry_run, "output_tail": "", "fp16_clipped": clipped,
              **({"fp32_nodes_found": found} if found is not None else {})}
    if params.dry_run:
        return result
    argv = [str(params.compiler), *options]
    return {**result, **run_compiler(argv, out, params.compiler_kind, params.compile_timeout_s)}


def _find_fp32_nodes(model: Any, signature: Any, specs: Any, checkpoint: Path, params: CompileAi100Params,
                     out: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from passes.lib import onnx_files
    from passes.numerics import eval_text
    from passes.numerics.precision import find_fp32_nodes
    from runtime import package_format as fmt

    ids = AutoTokenizer.from_pretrained(checkpoint)(eval_text.read_text(params.eval_text)).input_ids
    probe = fmt.Program(TARGET, signature, specs, graphs={s.name: onnx_files.MODEL for s in specs},
                        options={"intra_op_num_threads": 0})
    found = find_fp32_nodes(model, probe, ids, params.eval_tokens, out / ".fp32_probe")
    print(f"  fp32_nodes: auto found {len(found['names'])} of {found['values_probed']} node outputs past "
          f"{found['threshold']:g} on {min(len(ids), params.eval_tokens)} tokens of {eval_text.describe(params.eval_text)}",
          flush=True)
    return found


@hook("compile_ai100", "check")
def check(params: CompileAi100Params, facts: Any = None) -> None:
    """Bad values and a missing compiler: one line each, exit 2, before anything runs."""
    p = params
    if not isinstance(p.num_devices, int) or p.num_devices < 1:
        raise not_allowed("hw.num_devices", p.num_devices, "an integer >= 1")
    if not isinstance(p.num_cores, int) or not 1 <= p.num_cores <= MAX_CORES:
        raise not_allowed("hw.num_cores", p.num_cores, f"1..{MAX_CORES} (cores of one Cloud AI 100 device)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(p.hw_version)):
        raise not_allowed("hw.hw_version", p.hw_version, "a hardware version like ai100, ai200 or 2.0")
    for key in ("mos", "ols"):
        value = getattr(p, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise not_allowed(f"hw.{key}", value, "an integer >= 1, or null")
    if p.compile_timeout_s is not None and not p.compile_timeout_s > 0:
        raise not_allowed("hw.compile_timeout_s", p.compile_timeout_s, "a number of seconds > 0, or null (no limit)")
    for key, value in dict(p.extra_options).items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key):
            raise not_allowed("hw.extra_options", key, "option names that are identifiers (some_option: true -> -some-option)")
        if key in OWN_OPTIONS:
            raise not_allowed("hw.extra_options", key, f"an option the pass does not set itself (it sets -{key.replace('_', '-')} "
                       "from its own hw./compile. key)")
        if not isinstance(value, (bool, int, float, str)):
            raise not_allowed(f"hw.extra_options.{key}", value, "true, false, a number or a string")
    try:
        read_node_names(p.fp32_nodes)
    except ValueError as e:
        raise UserError(str(e)) from None
    spz.check_plan(p, facts)
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
    names = read_node_names(params.fp32_nodes)
    if names == AUTO:
        from passes.numerics import eval_text

        search = {"eval_text_sha256": eval_text.digest(params.eval_text)}
    else:  # the evaluation text is not read: keep it out of the key
        search = {"eval_text": None, "eval_tokens": 0, "eval_text_sha256": ""}
    return dataclasses.replace(params, compiler=str(path) if path else params.compiler,
                               compiler_version=version, compiler_kind=compiler_kind(named), fp32_nodes=names,
                               **search)
