"""The configuration schema: structured configs for every top-level node, and their checks.

The dataclasses give Hydra types (a wrong type is caught on composition); ``check_config``
adds ranges and cross-field rules, each failure one line naming key, value and what is
allowed. Presets live in ``conf/``.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from pipeline.pass_api import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SOURCES = ("hub", "local", "gguf", "random")
TARGETS = ("cpu", "ai100")


@dataclass
class ModelConfig:
    name: str = MISSING
    source: str = "random"            # hub | local | gguf | random
    hf_id: Optional[str] = None       # source=hub
    revision: str = "main"            # source=hub: branch, tag or commit
    path: Optional[str] = None        # source=local (HF folder) or gguf (file)
    hf_config: Dict[str, Any] = field(default_factory=dict)  # source=random: an inline HF config
    tokenizer: Optional[str] = None   # folder or GGUF file; null: the model's own
    seed: int = 0                     # source=random
    dtype: str = "float32"


@dataclass
class HwConfig:
    target: str = "cpu"                    # cpu (ONNX Runtime) | ai100 (Cloud AI 100 SDK)
    compile_pass: str = "compile_ort"      # the pass that builds the program for this target
    num_cores: int = 2                     # cpu: intra-op threads; ai100: cores per device
    compiler: Optional[str] = None         # ai100: path; null: qaic-compile, then qaic-exec, in /opt/qti-aic/exec
    num_devices: int = 1
    hw_version: str = "ai100"              # -aic-hw-version
    mxfp6_matmul: bool = False
    kv_cache_dtype: str = "float16"        # float16 | mxint8 | bfloat16
    mos: Optional[int] = None
    ols: Optional[int] = None
    aic_enable_depth_first: bool = False
    specialization_format: str = "flat"    # flat | named
    extra_options: Dict[str, Any] = field(default_factory=dict)  # some_option: True -> -some-option
    compile_timeout_s: Optional[float] = None  # none: real compiles take hours


@dataclass
class ExportConfig:
    dynamo: bool = False   # False: TorchScript exporter (12 s vs 64 s on SmolLM2, keeps functions)
    opset: int = 17


@dataclass
class RewriteConfig:
    rules: List[str] = field(default_factory=lambda: ["optimize"])


@dataclass
class CompileConfig:
    batch_size: int = 1
    prefill_seq_len: int = 32
    ctx_len: int = 256
    full_batch_size: Optional[int] = None   # continuous batching: KV batch dimension
    num_speculative_tokens: Any = None      # speculative target: K, or a list of K
    dry_run: bool = False                   # ai100: write the compile plan, run no compiler


@dataclass
class ValidateConfig:
    prompt: str = "The capital of France is"
    max_new_tokens: int = 32


@dataclass
class StoreConfig:
    root: str = "artifacts"


@dataclass
class PipelineConfig:
    stages: Dict[str, Any] = field(default_factory=dict)
    show_graph: bool = False
    force: List[str] = field(default_factory=list)  # stages to re-run even when cached


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    hw: HwConfig = field(default_factory=HwConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


def _package_file(package: str, name: str) -> str:
    """``${package_file:pkg,file}``: a file shipped in an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package_file: package {package!r} is not installed (needed for {name})")
    return str(Path(list(spec.submodule_search_locations)[0]) / name)


_RUN_ID = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"


def register() -> None:
    """Register the schema and resolvers (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    if not OmegaConf.has_resolver("package_file"):
        OmegaConf.register_new_resolver("package_file", _package_file)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: _RUN_ID)


def _bad(key: str, value: Any, allowed: str) -> UserError:
    return UserError(f"{key}: {value!r} is not allowed; {allowed}")


def check_config(cfg: Any, max_positions: int | None = None) -> None:
    """Ranges and cross-field rules. ``max_positions``: the model's limit, when known."""
    m, c = cfg.model, cfg.compile
    if m.source not in SOURCES:
        raise _bad("model.source", m.source, f"allowed: {' | '.join(SOURCES)}")
    if m.source == "hub" and not m.hf_id:
        raise _bad("model.hf_id", m.hf_id, "source=hub needs a hub id like org/name")
    if m.source in ("local", "gguf") and not m.path:
        raise _bad("model.path", m.path, f"source={m.source} needs a path")
    if m.source == "random" and not m.hf_config:
        raise _bad("model.hf_config", m.hf_config, "source=random needs an inline HF config with model_type")
    if m.source == "random" and "model_type" not in m.hf_config:
        raise _bad("model.hf_config", OmegaConf.to_container(m.hf_config), "it must name model_type")
    if m.dtype not in ("float32",):
        raise _bad("model.dtype", m.dtype, "allowed: float32")
    if cfg.hw.target not in TARGETS:
        raise _bad("hw.target", cfg.hw.target, f"allowed: {' | '.join(TARGETS)}")
    if not 1 <= cfg.hw.num_cores <= 4096:
        raise _bad("hw.num_cores", cfg.hw.num_cores, "allowed: an integer >= 1")
    if cfg.export.opset not in range(14, 22):
        raise _bad("export.opset", cfg.export.opset, "allowed: 14..21")
    if not 1 <= c.batch_size <= 1024:
        raise _bad("compile.batch_size", c.batch_size, "allowed: 1..1024")
    if not 1 <= c.ctx_len:
        raise _bad("compile.ctx_len", c.ctx_len, "allowed: an integer >= 1")
    if max_positions is not None and c.ctx_len > max_positions:
        raise _bad("compile.ctx_len", c.ctx_len, f"allowed: 1..{max_positions} (the model's max positions)")
    if not 1 <= c.prefill_seq_len <= c.ctx_len:
        raise _bad("compile.prefill_seq_len", c.prefill_seq_len, f"allowed: 1..{c.ctx_len} (compile.ctx_len)")
    if not 1 <= cfg.validate.max_new_tokens < c.ctx_len:
        raise _bad("validate.max_new_tokens", cfg.validate.max_new_tokens, f"allowed: 1..{c.ctx_len - 1}")
    # compile.full_batch_size and compile.num_speculative_tokens: checked by the compile
    # passes' hooks through passes.specializations.plan, the one place that reads them.
    if cfg.hw.num_devices < 1:
        raise _bad("hw.num_devices", cfg.hw.num_devices, "allowed: an integer >= 1")
    if not cfg.validate.prompt:
        raise _bad("validate.prompt", cfg.validate.prompt, "allowed: a non-empty string")
