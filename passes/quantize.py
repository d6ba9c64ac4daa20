"""Pass `quantize`: a compiled ONNX Runtime program's MatMul weights as int8 or int4 blocks (com.microsoft MatMulNBits).

Inputs ``program`` (a compile stage's folder) and ``checkpoint`` (the load stage's). A quantized
checkpoint's integers (passes.load.quantized) go into MatMulNBits unchanged
(passes.lib.checkpoint_ints). ``quantize.weights: null`` with a float checkpoint hands the
program on as it is (a tree of links: nothing is copied). ``int8`` / ``int4``: onnxruntime's
own weight-only quantizer (``MatMulNBitsQuantizer``: round-to-nearest, symmetric or not, or
HQQ) turns every other MatMul with a constant weight into MatMulNBits, in blocks of
``quantize.block_size`` along the reduction axis, computed at ``quantize.accuracy_level`` (4:
int8 activations, the fast path); MatMuls whose node or weight name matches a
``quantize.exclude`` pattern (fnmatch, e.g. ``*lm_head*``) stay float. A head tied to the
embedding stays tied: the embedding gathers its rows from the head's blocks
(passes.targets.ort.tied), so the table is stored once. It runs on the compiled program, after
the target's fusions (packed q/k/v, GroupQueryAttention), so changing it re-runs neither export
nor compile; a scatter program's graphs share one quantized weights file. program.json records
the settings (``build.quantize``): the target reads them as the package's numerics, and
validation gates the package teacher-forced (passes.numerics.gate).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, List, Mapping, Optional

from pipeline.pass_api import (
    REQUIRED, Needs, UserError, cfg_field, config_of, config_schema, find_target, hook, register_pass,
)
from runtime.package_format import ONNXRUNTIME

BITS = {"int8": 8, "int4": 4}


class Weights(StrEnum):
    int8 = "int8"
    int4 = "int4"


class Method(StrEnum):
    rtn = "rtn"  # round to nearest, per block
    hqq = "hqq"  # half-quadratic quantization: scales and zero points fitted per block, no calibration data


@config_schema("quantize")
@dataclass
class QuantizeConfig:
    """quantize.*: weight-only quantization of a CPU program's MatMuls (null: none)."""

    weights: Optional[Weights] = None  # int8 | int4: a CPU program's MatMul weights as MatMulNBits blocks; null: float
    block_size: int = 32  # weights per block (a power of two >= 16)
    method: Method = Method.rtn  # rtn (round to nearest) | hqq (onnxruntime's HQQ; int4 only)
    symmetric: bool = True  # rtn: zero at the block's centre (no zero points) or a uint8 zero point per block
    exclude: List[str] = field(default_factory=list)  # fnmatch patterns of MatMul node or weight names kept float
    # MatMulNBits' compute: 4 quantizes activations to int8 per block on the fly (SmolLM2 int8 decode 128 tok/s
    # against 5.5 with 0), 1 fp32, 0 unset; the teacher-forced gate measures the package as it computes
    accuracy_level: int = 4


@dataclass(frozen=True)
class QuantizeParams:
    weights: Optional[str] = cfg_field(QuantizeConfig, "weights")
    block_size: int = cfg_field(QuantizeConfig, "block_size")
    method: str = cfg_field(QuantizeConfig, "method")
    symmetric: bool = cfg_field(QuantizeConfig, "symmetric")
    exclude: tuple = cfg_field(QuantizeConfig, "exclude")
    accuracy_level: int = cfg_field(QuantizeConfig, "accuracy_level")
    target: str = cfg_field("hw.target", REQUIRED, kind="target")


@register_pass("quantize", params=QuantizeParams, deps=("onnx", "onnx_ir", "onnxruntime"), materialize=True,
               needs=Needs(modules=("onnx_ir",)))
def quantize(inputs: Mapping[str, Any], params: QuantizeParams, out: Path) -> dict[str, Any]:
    import dataclasses

    from passes.lib import onnx_files
    from passes.lib.files import copy_tree, link_or_copy
    from passes.targets.ort.compile import prove_loads
    from runtime import package_format as fmt

    src = Path(inputs["program"])
    checkpoint = inputs.get("checkpoint")
    ints = {}  # a quantized checkpoint's integers (passes.load.quantized), for targets ONNX Runtime runs
    if checkpoint is not None and find_target(params.target).runtime == ONNXRUNTIME:
        from passes.load.quantized import load_sidecar

        ints = load_sidecar(Path(checkpoint))
    if params.weights is None and not ints:
        copy_tree(src, out)  # links
        return {"weights": None}
    program = fmt.read_program(src)
    files = list(dict.fromkeys(program.graphs.values()))  # one dynamic graph, or one per specialization
    model, counts = _quantize(onnx_files.load_ir(src, files[0]), params, ints)
    onnx_files.save_ir(model, out, name=files[0])
    del model
    for other in files[1:]:  # the same graph at other fixed shapes: the same quantized weights, stored once
        _reshaped_like(out / files[0], src / other, out / other)
    prove_loads(out, program)
    if (src / fmt.SIGNATURE).is_file():
        link_or_copy(src / fmt.SIGNATURE, out / fmt.SIGNATURE)
    record = config_of(params)["quantize"]
    if counts.get("from_checkpoint"):
        record["checkpoint"] = {"weights": f"int{min(v['bits'] for v in ints.values())}",
                                "linears": counts["from_checkpoint"]}
    build = {**program.build, "quantize": record}  # the package's numerics (Target.numerics)
    fmt.write_program(out, dataclasses.replace(program, weights=tuple(onnx_files.data_files(out, files[0])), build=build))
    return {"weights": params.weights, **counts}


def _reshaped_like(quantized: Path, original: Path, out: Path) -> None:
    """``original`` (a specialization's fixed-shape copy of the graph ``quantized`` came from) quantized the
    same way: ``quantized``'s nodes and weight references, ``original``'s input, output and value shapes."""
    import onnx

    q = onnx.load(str(quantized), load_external_data=False)
    o = onnx.load(str(original), load_external_data=False)
    produced = {name for node in q.graph.node for name in node.output}
    for field in ("input", "output"):
        del getattr(q.graph, field)[:]
        getattr(q.graph, field).extend(getattr(o.graph, field))
    del q.graph.value_info[:]
    q.graph.value_info.extend(v for v in o.graph.value_info if v.name in produced)
    onnx.save_model(q, str(out))


def _quantize(model: Any, params: QuantizeParams, ints: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, int]]:
    """``model`` (onnx_ir) with its MatMuls as MatMulNBits, and counts: those whose weights a quantized checkpoint
    holds (``ints``, passes.load.quantized.load_sidecar) from its integers, the rest (``quantize.weights``)
    through onnxruntime's quantizer (on a proto)."""
    import logging

    import onnx_ir as ir
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    from passes.lib import checkpoint_ints
    from passes.targets.ort import tied

    logging.getLogger(mq.__name__).setLevel(logging.WARNING)  # a line per node otherwise

    heads = tied.untie(model)  # the quantizer takes MatMuls; the tied table is shared again below
    _gemms_to_matmuls(model)  # an encoder's Linear layers (compile made them Gemm); the bias goes back in below
    from_checkpoint = checkpoint_ints.substitute(model, ints or {}, params.accuracy_level)
    graph = model.graph
    excluded = [n.name for n in graph if n.op_type == "MatMul" and _excluded(n, params.exclude)]
    if params.weights is not None:
        bits = BITS[params.weights]
        if params.method == Method.hqq:
            config = mq.HQQWeightOnlyQuantConfig(block_size=params.block_size, bits=bits)
        else:
            config = mq.DefaultWeightOnlyQuantConfig(block_size=params.block_size, is_symmetric=params.symmetric,
                                                     bits=bits)
        proto = ir.serde.serialize_model(model)
        quantizer = mq.MatMulNBitsQuantizer(proto, nodes_to_exclude=excluded, algo_config=config)
        quantizer.process()
        quantized = ir.serde.deserialize_model(quantizer.model.model)
    else:
        quantized = model
    shared = tied.share_quantized_table(quantized, heads)
    _biases_inside(quantized)
    for node in quantized.graph:
        if node.op_type == "MatMulNBits":
            node.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", params.accuracy_level)
    ops = [n.op_type for n in quantized.graph]
    return quantized, {"matmul_nbits": ops.count("MatMulNBits"), "matmul_kept": ops.count("MatMul"),
                       "excluded": len(excluded), "tables_shared": shared,
                       "from_checkpoint": from_checkpoint}


def _gemms_to_matmuls(model: Any) -> None:
    """Gemm(x, W, b) of constant W [K, N] and b [N] (no scaling, no transposes) -> MatMul(x, W) + b, same name."""
    import onnx_ir as ir

    from passes.targets.ort import tied

    for node in list(model.graph):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 3:
            continue
        x, w, b = node.inputs
        a = node.attributes
        plain = (a.get_float("alpha", 1.0) == a.get_float("beta", 1.0) == 1.0
                 and a.get_int("transA", 0) == a.get_int("transB", 0) == 0)
        if not plain or w.const_value is None or b is None or b.const_value is None or len(b.const_value.shape) != 1:
            continue
        matmul = ir.node("MatMul", [x, w], name=node.name)
        tied.replace(model, node, matmul, ir.node("Add", [matmul.outputs[0], b], name=f"{node.name}_bias"))


def _biases_inside(model: Any) -> None:
    """MatMulNBits followed by Add of a constant [N] bias: the bias as MatMulNBits' own input (one pass over the output)."""
    for node in list(model.graph):
        if node.op_type != "MatMulNBits" or len(node.inputs) > 5:
            continue
        uses = list(node.outputs[0].uses())
        add = uses[0].node if len(uses) == 1 else None
        if add is None or add.op_type != "Add" or node.outputs[0].is_graph_output():
            continue
        bias = add.inputs[1 - uses[0].idx]
        n = node.attributes["N"].as_int()
        if bias is None or bias.const_value is None or tuple(bias.const_value.shape) != (n,):
            continue
        node.resize_inputs(6)  # A, B, scales, zero_points, g_idx, bias
        node.replace_input_with(5, bias)
        name = add.outputs[0].name
        add.outputs[0].replace_all_uses_with(node.outputs[0], replace_graph_outputs=True)
        model.graph.remove(add, safe=True)
        node.outputs[0].name = name


def _excluded(node: Any, patterns: Any) -> bool:
    names = [node.name or ""] + [v.name for v in node.inputs if v is not None and v.is_initializer()]
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns for name in names)


@hook("quantize", "check")
def check(params: QuantizeParams, facts: Any = None) -> None:
    if params.weights is None:
        return
    if find_target(params.target).runtime != ONNXRUNTIME:
        raise UserError(f"quantize.weights: {params.weights!r} is not allowed for hw.target={params.target}; allowed: "
                        "null (MatMulNBits programs are for targets ONNX Runtime runs; this target stores weights "
                        "in its own formats)")
    b = params.block_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 16 or b & (b - 1):
        raise UserError(f"quantize.block_size: {b!r} is not allowed; allowed: a power of two >= 16 (e.g. 32, 64, 128)")
    if params.method == Method.hqq and params.weights == Weights.int8:
        raise UserError("quantize.method: 'hqq' is not allowed with quantize.weights=int8; allowed: rtn (ONNX Runtime's "
                        "CPU MatMulNBits takes no float zero points at 8 bits, and HQQ's are float)")
    if params.accuracy_level not in (0, 1, 2, 3, 4):
        raise UserError(f"quantize.accuracy_level: {params.accuracy_level!r} is not allowed; allowed: 0 (unset), 1 (fp32), "
                        "2 (fp16), 3 (bf16), 4 (int8 activations)")
    if not all(isinstance(p, str) and p for p in params.exclude):
        raise UserError(f"quantize.exclude: {list(params.exclude)!r} is not allowed; allowed: a list of name patterns")
