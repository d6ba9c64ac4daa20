"""Checkpoints already quantized (compressed-tensors pack-quantized, GPTQ): their integers reach the package unchanged."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_pipeline

GROUP = 32
LOCAL = ("model.source=local", "model.tokenizer=null", "model.hf_config={}")


def _float_checkpoint(built_store: Path) -> Path:
    """The load stage's folder of the session's tiny_llama build (an HF folder with its tokenizer)."""
    summary = json.loads(next((built_store.parent).glob("run-*/summary.json")).read_text())
    load = next(s for s in summary["stages"] if s["name"] == "load")
    return built_store / "trees" / load["digest"]


def _rtn(w: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(signed or unsigned ints [N, K], scales [N, G], zero points [N, G] or None): round to nearest per group."""
    n, k = w.shape
    g = w.reshape(n, k // GROUP, GROUP)
    if symmetric:
        top = (1 << (bits - 1)) - 1
        scales = np.abs(g).max(-1) / top
        q = np.clip(np.round(g / scales[..., None]), -top - 1, top)
        return q.reshape(n, k).astype(np.int8), scales, None
    lo, hi = g.min(-1), g.max(-1)
    scales = (hi - lo) / ((1 << bits) - 1)
    zeros = np.clip(np.round(-lo / scales), 0, (1 << bits) - 1)
    q = np.clip(np.round(g / scales[..., None]) + zeros[..., None], 0, (1 << bits) - 1)
    return q.reshape(n, k).astype(np.uint8), scales, zeros.astype(np.uint8)


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """uint [rows, cols] packed along cols into int32 words, element i at bit i * bits (GPTQ's, AWQ's, c-t's order)."""
    per = 32 // bits
    v = values.astype(np.uint32).reshape(values.shape[0], -1, per)
    words = np.zeros(v.shape[:2], np.uint32)
    for i in range(per):
        words |= v[:, :, i] << np.uint32(i * bits)
    return words.view(np.int32)


def _awq_pack(values: np.ndarray) -> np.ndarray:
    """AWQ's GEMM packing: along cols, each word's nibble i holding element (0 2 4 6 1 3 5 7)[i] of its 8."""
    rows, cols = values.shape
    return _pack(values.reshape(rows, cols // 8, 8)[:, :, [0, 2, 4, 6, 1, 3, 5, 7]].reshape(rows, cols), 4)


def write_checkpoint(src: Path, dst: Path, layout: str, bits: int) -> dict[str, np.ndarray]:
    """tiny_llama's float folder ``src`` written quantized in ``layout`` at ``dst``; the unsigned ints per Linear."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    weights = load_file(str(dst / "model.safetensors"))
    out, ints = {}, {}
    for name, t in weights.items():
        module = name[: -len(".weight")]
        if not (name.endswith("_proj.weight") and ".layers." in name):
            out[name] = t
            continue
        w = t.float().numpy()
        if layout == "compressed-tensors":
            q, scales, _ = _rtn(w, bits, symmetric=True)
            if bits == 4:
                from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

                out[f"{module}.weight_packed"] = pack_to_int32(torch.from_numpy(q), bits)  # the library's own packing
            else:
                out[f"{module}.weight_packed"] = torch.from_numpy(_pack((q.astype(np.int16) + 128).astype(np.uint8), 8))
            out[f"{module}.weight_scale"] = torch.from_numpy(scales).to(torch.float16)
            out[f"{module}.weight_shape"] = torch.tensor(w.shape)
            ints[module] = (q.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
        elif layout == "awq":  # GEMM, asymmetric
            q, scales, zeros = _rtn(w, bits, symmetric=False)
            out[f"{module}.qweight"] = torch.from_numpy(_awq_pack(q.T.copy()))  # [K, N / 8]: packed along N
            out[f"{module}.qzeros"] = torch.from_numpy(_awq_pack(zeros.T.copy()))
            out[f"{module}.scales"] = torch.from_numpy(scales.T.copy()).to(torch.float16)
            ints[module] = q
        elif layout == "fp8":  # compressed-tensors float-quantized, a scale per output channel
            scale = np.abs(w).max(1, keepdims=True) / 448.0
            out[name] = torch.from_numpy(w / scale).to(torch.float8_e4m3fn)
            out[f"{module}.weight_scale"] = torch.from_numpy(scale.astype(np.float32))
            ints[module] = (out[name].float() * out[f"{module}.weight_scale"]).numpy()  # its float meaning
        else:  # GPTQ v1, asymmetric
            q, scales, zeros = _rtn(w, bits, symmetric=False)
            out[f"{module}.qweight"] = torch.from_numpy(_pack(q, bits).T.copy())  # [K / 8, N]: packed along K
            out[f"{module}.qzeros"] = torch.from_numpy(_pack((zeros.astype(np.int16) - 1).astype(np.uint8).T, bits))
            out[f"{module}.scales"] = torch.from_numpy(scales.T.copy()).to(torch.float16)
            out[f"{module}.g_idx"] = torch.arange(w.shape[1], dtype=torch.int32) // GROUP
            ints[module] = q
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    if layout == "compressed-tensors":
        config["quantization_config"] = {
            "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "ignore": ["lm_head"], "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                "num_bits": bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": GROUP,
                "dynamic": False}}}}
    elif layout == "awq":
        config["quantization_config"] = {"quant_method": "awq", "bits": bits, "group_size": GROUP, "version": "gemm",
                                         "zero_point": True}
    elif layout == "fp8":
        config["quantization_config"] = {
            "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
            "ignore": ["lm_head"], "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                "num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel", "dynamic": False}}}}
    else:
        config["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": GROUP, "desc_act": False,
                                         "sym": False, "checkpoint_format": "gptq"}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return ints


def _nbits(package: Path) -> dict[str, dict]:
    from passes.lib.onnx_files import load_ir  # onnx.load refuses the store's hard-linked data (issue 29)

    found = {}
    for node in load_ir(package).graph:
        if node.op_type == "MatMulNBits":
            attrs = {k: a.value for k, a in node.attributes.items()}
            found[node.name] = {**attrs, "blocks": node.inputs[1].const_value.numpy()}
    return found


def _unpacked(blocks: np.ndarray, bits: int) -> np.ndarray:
    rows = blocks.reshape(blocks.shape[0], -1)
    return rows if bits == 8 else np.stack([rows & 0xF, rows >> 4], -1).reshape(rows.shape[0], -1)


@pytest.mark.parametrize("layout, bits", [("compressed-tensors", 4), ("compressed-tensors", 8), ("gptq", 4), ("awq", 4)])
def test_a_quantized_checkpoint_keeps_its_integers_in_the_package(built_store, store, tmp_path, layout, bits):
    ints = write_checkpoint(_float_checkpoint(built_store), tmp_path / "ckpt", layout, bits)
    r = run_pipeline(store, *LOCAL, f"model.path={tmp_path / 'ckpt'}")
    assert r.rc == 0, r.out + r.err
    gate = r.summary["validation"]["gate"]
    assert gate["passed"] and gate["numerics"]["matmul_weights"] == f"int{bits}" and gate["ppl_ratio"] < 1.01, gate
    nbits = _nbits(Path(r.summary["package"]))
    assert len(nbits) == 10 and all("from_checkpoint" in n for n in nbits)  # 2 layers x (qkv, o, gate, up, down)
    qkv = next(v for n, v in nbits.items() if "qkv" in n or v["N"] == 128)
    q = _unpacked(qkv["blocks"], bits)[:64]  # packed q, k, v: q's 64 rows first
    assert np.array_equal(q, ints["model.layers.0.self_attn.q_proj"]), "the checkpoint's integers changed"
    down = [v for v in nbits.values() if v["K"] == 128]
    assert any(np.array_equal(_unpacked(v["blocks"], bits), ints["model.layers.1.mlp.down_proj"]) for v in down)

    if layout != "gptq":
        return
    # what the checkpoint left float (lm_head) follows quantize.weights; only quantize and after re-run
    again = run_pipeline(store, *LOCAL, f"model.path={tmp_path / 'ckpt'}", "quantize.weights=int8")
    assert again.rc == 0, again.out + again.err
    assert {n for n, s in again.status().items() if s == "ran"} == {"quantize", "package", "validate"}
    assert len(_nbits(Path(again.summary["package"]))) == 11


def test_an_fp8_checkpoint_is_dequantized_at_load(built_store, store, tmp_path):
    meaning = write_checkpoint(_float_checkpoint(built_store), tmp_path / "ckpt", "fp8", 8)
    r = run_pipeline(store, *LOCAL, f"model.path={tmp_path / 'ckpt'}")
    assert r.rc == 0 and r.summary["validation"]["passed"], r.out + r.err
    assert not _nbits(Path(r.summary["package"]))  # float weights: the fp32 program, checked exactly
    from safetensors.numpy import load_file

    load = store / "trees" / r.stage("load")["digest"]
    got = load_file(str(load / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    assert np.array_equal(got, meaning["model.layers.0.mlp.up_proj"])


def test_the_float_model_is_what_transformers_reads_from_the_checkpoint(built_store, tmp_path):
    """The load stage's float weights equal transformers' own decompression (compressed-tensors) of the checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from passes.load.quantized import read

    write_checkpoint(_float_checkpoint(built_store), tmp_path / "ckpt", "compressed-tensors", 4)
    floats, linears = read(tmp_path / "ckpt")
    theirs = AutoModelForCausalLM.from_pretrained(  # decompressed to float, as it runs it on a CPU
        tmp_path / "ckpt", dtype=torch.float32, quantization_config=CompressedTensorsConfig(run_compressed=False)).state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert len(linears) == 14 and name in theirs
    assert np.allclose(floats[name], theirs[name].float().numpy(), rtol=1e-3, atol=1e-6)


def test_a_checkpoint_format_that_cannot_be_read_says_so_in_one_line(built_store, store, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(_float_checkpoint(built_store), folder)
    folder.chmod(0o755)
    (folder / "config.json").chmod(0o644)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (folder / "config.json").write_text(json.dumps(config))
    r = run_pipeline(store, *LOCAL, f"model.path={folder}")
    assert r.rc == 2 and "Traceback" not in r.out + r.err
    assert "declares quantization_config.quant_method 'bitsandbytes' cannot be read; allowed: gptq" in r.out + r.err
