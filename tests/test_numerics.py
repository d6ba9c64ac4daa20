"""Validate what ships: MX rounding against torchao, the numerics twin, the teacher-forced gate, fp32 nodes found.

One tiny_llama AI 100 build (stand-in compiler) serves the graph-level checks; a tiny model
whose residual stream leaves fp16's range is built twice (hw.fp32_nodes none, then auto).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_pipeline

STANDIN = ROOT / "tests" / "standin_qaic_compile.py"
ENV = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
REFERENCE_LIBS = ROOT / ".venv" / "reference-libs"  # torchao, off the import path (Makefile)
TOKENS = 1024  # the graph-level gate runs; the builds use the default validate.eval_tokens (4096)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    store = tmp_path_factory.mktemp("numerics") / "store"
    r = run_pipeline(store, "hw=ai100_16c", f"hw.compiler={STANDIN}", env=ENV)
    assert r.rc == 0, r.out + r.err
    trees = {name: store / "trees" / r.stage(name)["digest"] for name in ("load", "rewrite", "compile", "twin")}
    yield store, r, trees
    shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="module")
def evaluation_ids(build):
    from transformers import AutoTokenizer

    from passes.numerics import eval_text

    return AutoTokenizer.from_pretrained(build[2]["load"])(eval_text.read_text(None))["input_ids"]


def _twin(build, src: Path, out: Path, numerics, edit=None):
    """A twin of the graph in ``src`` (edit(model) first, if given) saved in ``out`` with the compile's program."""
    from passes.lib import onnx_files
    from passes.numerics.twin import make_twin
    from runtime import package_format as fmt

    program = fmt.read_program(build[2]["compile"])
    model = onnx_files.load_ir(src)
    if edit is not None:
        edit(model)
    counts = make_twin(model, numerics, [v.name for v in program.signature.past_kv()])
    out.mkdir(parents=True)
    onnx_files.save_ir(model, out)
    fmt.write_program(out, program)
    return counts


def _gate(build, folder: Path, ids, tokens: int = TOKENS):
    import torch
    from transformers import AutoModelForCausalLM

    from passes.numerics import gate
    from runtime.sessions.ort import OrtSession
    from runtime import package_format as fmt

    program = fmt.read_program(build[2]["compile"])
    model = AutoModelForCausalLM.from_pretrained(build[2]["load"], dtype=torch.float32).eval()
    return gate.evaluate(OrtSession(folder, program=program), model, ids, tokens)


def test_mxfp6_rounding_equals_torchao():
    """Our MXFP6 (E2M3, and E3M2) quantize-dequantize equals torchao's mx_formats on random tensors (FLOOR scales)."""
    script = r"""
import numpy as np, torch
from torchao.prototype.mx_formats.mx_tensor import to_mx, to_dtype
from torchao.prototype.mx_formats.config import ScaleCalculationMode
from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
from passes.numerics.mx import E2M3, E3M2, mxfp6
rng = np.random.default_rng(7)
checked = 0
for element, dtype in ((E2M3, DTYPE_FP6_E2M3), (E3M2, DTYPE_FP6_E3M2)):
    for scale in (1e-4, 0.02, 1.0, 300.0):
        x = (rng.standard_normal((48, 256)) * scale).astype(np.float32)
        x[5, :32] = 0.0                      # an all-zero block
        x[7, 40] = scale * 50                # an outlier in its block
        s, data = to_mx(torch.from_numpy(x), dtype, 32, ScaleCalculationMode.FLOOR)
        theirs = to_dtype(data, s, dtype, 32, torch.float32).numpy()
        ours = mxfp6(x, axis=-1, element=element)
        assert np.array_equal(theirs, ours), (dtype, scale, np.abs(theirs - ours).max())
        assert np.array_equal(mxfp6(x.T.copy(), axis=0, element=element), ours.T)  # the axis is honoured
        checked += 1
print("checked", checked)
"""
    if not (REFERENCE_LIBS / "torchao").is_dir():
        pytest.fail(f"torchao is not in {REFERENCE_LIBS}: run `make setup`")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "PYTHONPATH": f"{REFERENCE_LIBS}{os.pathsep}{ROOT}"})
    assert r.returncode == 0 and "checked 8" in r.stdout, r.stdout + r.stderr[-3000:]


def test_mxint8_in_the_graph_equals_the_numpy_rounding():
    """The twin's KV rounding (ONNX ops) is the OCP MXINT8 of passes.numerics.mx, also for a padded last block."""
    import onnx_ir as ir
    import onnxruntime as ort

    from passes.numerics.mx import mxint8
    from passes.numerics.twin import make_twin
    from pipeline.target_api import Numerics

    for opset, width in ((17, 40), (18, 64)):
        x = ir.Value(name="past", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 3, 5, width]))
        node = ir.node("Identity", [x], outputs=[ir.Value(name="y", type=ir.TensorType(ir.DataType.FLOAT),
                                                          shape=ir.Shape([2, 3, 5, width]))])
        graph = ir.Graph([x], node.outputs, nodes=[node], opset_imports={"": opset})
        model = ir.Model(graph, ir_version=8)
        assert make_twin(model, Numerics(kv_cache="mxint8"), ["past"])["mxint8_kv_inputs"] == 1
        session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString())
        rng = np.random.default_rng(opset)
        value = (rng.standard_normal((2, 3, 5, width)) * rng.choice([1e-3, 1, 50], (2, 3, 5, 1))).astype(np.float32)
        value[0, 0, 0] = 0.0
        ours = session.run(None, {"past": value})[0]
        expected = mxint8(value, axis=-1)
        assert np.array_equal(ours, expected), np.abs(ours - expected).max()
        assert np.array_equal(mxint8(expected), expected)  # idempotent: a cache read twice is read the same
        assert 0 < np.abs(expected - value).max() <= np.abs(value).max() / 64


def test_the_twin_runs_and_summary_names_it(build):
    store, r, trees = build
    v = r.summary["validation"]
    assert v["target"] == "onnx-fp16-mxfp6" and v["exact_target"] == "onnx" and v["passed"]
    g = v["gate"]
    assert g["passed"] and g["tokens"] >= 4000 and g["nonfinite_positions"] == 0 and g["bounds"]["max_ppl_ratio"] == 1.01
    twin = json.loads((trees["twin"] / "twin.json").read_text())
    assert twin["changed"]["mxfp6_weights"] == 15 and twin["changed"]["rounded_values"] > 100  # 14 projections + lm_head
    assert "matching_prefix_tokens" in g and "validation: passed (target onnx-fp16-mxfp6" in r.out
    # a bound the twin cannot meet: exit 1, one line naming the metric, its value and the bound
    bad = run_pipeline(store, "hw=ai100_16c", f"hw.compiler={STANDIN}", "validate.max_ppl_ratio=0.5", env=ENV)
    assert bad.rc == 1 and bad.status()["validate"] == "failed" and bad.status()["twin"] == "cached"
    line = next(x for x in bad.out.splitlines() if x.startswith("validate: failed"))
    assert "ppl_ratio 0.99" in line and "breaks validate.max_ppl_ratio 0.5" in line, line


def test_fp16_twin_of_weights_past_fp16_range_fails_without_fp16_clip(build, evaluation_ids, tmp_path):
    """A norm weight of 1e6 on a residual channel held at exactly zero: harmless in fp32 (0 * 1e6), inf * 0 = NaN
    in fp16 unless the constant is clipped to 65504 first (0 * 65504 = 0)."""
    from passes.rewrites.fp16_clip import clip_fp16
    from pipeline.target_api import Numerics
    from passes.numerics import gate

    channel = 5

    def dead_channel(model):
        import onnx_ir as ir

        inits = model.graph.initializers
        for name, value in inits.items():
            array = np.array(value.const_value.numpy())
            if name == "model.model.embed_tokens.weight":
                array[:, channel] = 0.0
            elif name.endswith(("o_proj.weight.T", "down_proj.weight.T")):
                array[:, channel] = 0.0
            elif name == "model.model.layers.0.input_layernorm.weight":
                array[channel] = 1e6
            else:
                continue
            value.const_value = ir.Tensor(array, name=name)

    fp16 = Numerics("float16", "float16", "float16")
    _twin(build, build[2]["rewrite"], tmp_path / "plain", Numerics(), dead_channel)  # the edited model in fp32
    _twin(build, build[2]["rewrite"], tmp_path / "unclipped", fp16, dead_channel)
    _twin(build, build[2]["rewrite"], tmp_path / "clipped", fp16, lambda m: (dead_channel(m), clip_fp16(m)))
    plain = _gate(build, tmp_path / "plain", evaluation_ids, 300)
    assert gate.judge(plain, gate.bounds(gate.FP16_PPL_RATIO), "fp32") is None  # in fp32 the edited model is as good as the original
    unclipped = _gate(build, tmp_path / "unclipped", evaluation_ids, 300)
    failure = gate.judge(unclipped, gate.bounds(gate.FP16_PPL_RATIO), "onnx-fp16")
    assert unclipped["nonfinite_positions"] == unclipped["positions"] and failure.startswith(
        "validate: the onnx-fp16 logits are not finite"), failure
    clipped = _gate(build, tmp_path / "clipped", evaluation_ids, 300)
    assert gate.judge(clipped, gate.bounds(gate.FP16_PPL_RATIO), "onnx-fp16") is None, clipped


def test_a_dropped_scale_fails_the_gate_while_greedy_tokens_pass(build, evaluation_ids, tmp_path):
    """A broken rewrite that drops a logit scale (as Cohere's logit_scale, here 2/3: the head's weights come out
    1.5x): every argmax stays, so the 32 greedy tokens of validation are unchanged; the teacher-forced gate is not
    fooled."""
    import onnx_ir as ir

    from passes.numerics import gate
    from pipeline.target_api import Numerics
    from runtime import package_format as fmt
    from runtime.generate import generate
    from runtime.sessions.ort import OrtSession

    def drop_logit_scale(model):
        head = model.graph.initializers["model.lm_head.weight.T"]
        head.const_value = ir.Tensor(np.asarray(head.const_value.numpy()) * 1.5, name=head.name)

    fp16 = Numerics("float16", "float16", "float16")
    _twin(build, build[2]["compile"], tmp_path / "broken", fp16, drop_logit_scale)
    _twin(build, build[2]["compile"], tmp_path / "good", fp16)
    program = fmt.read_program(build[2]["compile"])
    reference = json.loads(next((build[0] / "trees").glob("*/reference.json")).read_text())
    broken = OrtSession(tmp_path / "broken", program=program)
    tokens = generate(broken, reference["prompt_ids"], reference["max_new_tokens"]).tokens[0]
    assert tokens == reference["tokens"]  # tokens alone would pass
    assert gate.judge(_gate(build, tmp_path / "good", evaluation_ids), gate.bounds(gate.FP16_PPL_RATIO), "good") is None
    failure = gate.judge(_gate(build, tmp_path / "broken", evaluation_ids), gate.bounds(gate.FP16_PPL_RATIO), "broken")
    assert failure is not None and failure.startswith("validate: ppl_ratio 1.0"), failure


def test_an_mxint8_kv_twin_differs_from_the_fp16_one(build, evaluation_ids, tmp_path):
    from pipeline.target_api import Numerics

    fp16 = _twin(build, build[2]["compile"], tmp_path / "fp16", Numerics("float16", "float16", "float16"))
    mx = _twin(build, build[2]["compile"], tmp_path / "mx", Numerics("float16", "float16", "mxint8"))
    assert fp16["mxint8_kv_inputs"] == 0 and mx["mxint8_kv_inputs"] == 4  # 2 layers x (key, value)
    a, b = _gate(build, tmp_path / "fp16", evaluation_ids, 300), _gate(build, tmp_path / "mx", evaluation_ids, 300)
    assert a["nonfinite_positions"] == b["nonfinite_positions"] == 0
    assert b["mean_kl"] > 3 * a["mean_kl"] > 0 and b["ppl_package"] != a["ppl_package"]  # 9.8x here


def test_fp32_nodes_auto_finds_the_residual_sums_that_leave_fp16(build, tmp_path):
    """A tiny model whose residual stream passes 65504 (its MLP weights scaled): its fp16 twin gives NaN and fails
    the gate in one line; with hw.fp32_nodes=auto the compile plan keeps the residual adds in fp32 and it passes."""
    from safetensors.numpy import load_file, save_file

    hot = tmp_path / "hot"
    shutil.copytree(build[2]["load"], hot)
    for f in hot.glob("*.safetensors"):
        os.chmod(f, 0o644)
        weights = load_file(f)
        for name in weights:
            if "up_proj" in name:
                weights[name] = weights[name] * 200
            elif "down_proj" in name:
                weights[name] = weights[name] * 80000  # largest weight about 5.8e3: itself within fp16
        save_file(weights, f, metadata={"format": "pt"})
    store = tmp_path / "store"
    args = ("model.source=local", f"model.path={hot}", "model.tokenizer=null", "hw=ai100_16c", f"hw.compiler={STANDIN}")
    r = run_pipeline(store, *args, env=ENV)
    assert r.rc == 1 and r.status()["validate"] == "failed", r.out + r.err
    line = next(x for x in r.out.splitlines() if x.startswith("validate: failed"))
    assert "logits are not finite at" in line and "hw.fp32_nodes" in line, line
    r = run_pipeline(store, *args, "hw.fp32_nodes=auto", env=ENV)
    assert r.rc == 0, r.out + r.err
    plan = store / "trees" / r.stage("compile")["digest"]
    names = (plan / "node_precision.yaml").read_text()
    assert names.startswith("FP32NodeInstanceNames:\n")
    for layer in (0, 1):  # the residual sums after the (scaled) MLP
        assert f"/model/model/layers.{layer}/Add_1_output_0" in names, names
    assert "-node-precision-info=node_precision.yaml" in (plan / "compile.sh").read_text()
    assert json.loads((plan / "qpc" / "programqpc.bin").read_text())["fp32_nodes"]  # the stand-in read the file
    g = r.summary["validation"]["gate"]
    assert g["passed"] and g["nonfinite_positions"] == 0
    assert g["numerics"]["fp32_nodes"] == [line[3:] for line in names.splitlines()[1:]]  # the twin kept the same
    shutil.rmtree(store, ignore_errors=True)


def _evaluate(store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.evaluate", "model=tiny_llama", f"store.root={store}", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, **ENV})


def test_evaluate_compares_two_override_sets(build):
    """python -m pipeline.evaluate --compare: two columns, the reference once per column, each twin by its label."""
    store = build[0]
    r = _evaluate(store, "hw=ai100_16c", f"hw.compiler={STANDIN}", "--compare", "hw.mxfp6_matmul=true",
                  "hw.mxfp6_matmul=false hw.kv_cache_dtype=mxint8")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    header = next(x for x in lines if "hw.mxfp6_matmul=true" in x)
    assert "hw.mxfp6_matmul=false hw.kv_cache_dtype=mxint8" in header
    mx, kv = next(x for x in lines if x.startswith("onnx-fp16-mxfp6")), next(x for x in lines if x.startswith("onnx-fp16-kvmxint8"))
    assert mx.rstrip().endswith("-") and kv.split()[1] == "-"  # each twin in its own column
    assert "package: not run here (no Cloud AI 100 runtime (qaicrt) on this machine)" in r.stdout
    saved = json.loads(Path(lines[-1].split(": ", 1)[1]).read_text())
    first, second = saved.values()
    assert first["reference"]["ppl"] == second["reference"]["ppl"] and first["reference"]["positions"] > 2000
    assert list(first["runs"]) == ["onnx-fp16-mxfp6"] and list(second["runs"]) == ["onnx-fp16-kvmxint8"]
    # bad input: one line, exit 2, nothing built
    r = _evaluate(store, "--compare", "hw.mxfp6_matmul=true")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --compare:"), r.stderr


def test_an_fp32_package_evaluates_to_the_reference(store):
    """The CPU package computes in fp32: teacher-forced over the text it is the reference (ratio 1, KL ~ 0)."""
    r = _evaluate(store, "validate.eval_tokens=600")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    saved = json.loads(Path(r.stdout.splitlines()[-1].split(": ", 1)[1]).read_text())
    run = next(iter(saved.values()))["runs"]["package"]
    assert abs(run["ppl_ratio"] - 1) < 1e-5 and run["mean_kl"] < 1e-9 and run["top1_agreement"] == 1.0, run
