"""The configuration schema: structured configs for the top-level nodes, registered with Hydra.

The dataclasses give Hydra types (a wrong type is caught on composition). Each target's hw
schema lives with its target (``pipeline.targets`` entry points: passes/targets/*/compile.py)
and is registered here as ``hw_schema/<target>``, which the hw presets extend. Ranges and
cross-field rules are the passes' ``check`` hooks, each failure one line naming key, value
and what is allowed. Presets live in ``conf/``.
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
MODEL_ROLES = ("model", "draft_model")  # config groups with the same presets (conf/draft_model -> model)


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
    num_layers: Optional[int] = None  # keep the first N decoder layers (a layer-truncated draft); null: all
    adapters: Dict[str, str] = field(default_factory=dict)  # LoRA adapters {name: PEFT folder}, chosen at run time


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
    seq_len: Any = 128                      # an encoder (pipeline=embedding): one length, or a list (a specialization each)
    max_adapters: int = 8                   # with model.adapters: LoRA slots per package (adding one up to this recompiles nothing)
    dry_run: bool = False                   # ai100: write the compile plan, run no compiler


@dataclass
class ValidateConfig:
    prompt: str = "The capital of France is"
    max_new_tokens: int = 32
    atol: float = 1e-3   # max |logit diff| allowed where the package runs in fp32 (ONNX Runtime); tokens must be equal everywhere
    min_cosine: float = 0.9999  # embedding packages: every reference text's cosine similarity with sentence-transformers'


@dataclass
class EmbeddingConfig:
    """An embedding package (pipeline=embedding): how the encoder's last hidden states become one vector."""

    pooling: Optional[str] = None     # mean | cls | max | avg | module:function; null: the model's own (sentence-transformers config)
    normalize: Optional[bool] = None  # L2-normalize; null: the model's own


@dataclass
class StoreConfig:
    root: str = "artifacts"
    memo: Optional[str] = None  # the local digest memo; null: in the store, or ~/.cache when the store is on NFS
    remote: Optional[str] = None   # a second tier (pipeline.store.remote): an fsspec URL (s3://bucket/prefix, a folder)
    push: bool = False             # push what this run builds to the remote (CI); false: read only
    remote_options: Dict[str, Any] = field(default_factory=dict)  # fsspec storage options (e.g. client_kwargs.endpoint_url)


@dataclass
class BenchmarkConfig:
    """The benchmark stage: a fixed prompt set, generated after a warm-up run, medians of ``repeats``."""

    prompts: List[str] = field(default_factory=lambda: [
        "My name is", "The capital of France is", "Write a haiku about the sea.",
        "Explain in one sentence what a compiler does."])
    generation_len: int = 64
    repeats: int = 3
    chat: bool = False


@dataclass
class SpdConfig:
    """Speculative decoding (conf/spd, runtime.speculative): the scheme and K, the one source of
    compile.num_speculative_tokens when the scheme is not none."""

    name: str = "none"                   # none | draft | pld | multiproj
    num_speculative_tokens: Any = 3      # K, or a list of K (one decode specialization each)
    max_ngram_size: int = 3              # pld: the longest n-gram looked up
    speculator: Optional[str] = None     # multiproj: a folder (speculator_config.json, speculator.safetensors); null: random heads


@dataclass
class SweepConfig:
    """The report of a sweep (pipeline.report): the heatmap's metric and axes (swept keys)."""

    metric: Optional[str] = None   # decode_tok_s | ttft_ms | compile_s | package_mb | run_s; null: decode tok/s when benchmarked, else compile s
    x: Optional[str] = None        # null: the first swept key
    y: Optional[str] = None        # null: the next swept key


@dataclass
class PipelineConfig:
    stages: Dict[str, Any] = field(default_factory=dict)
    show_graph: bool = False
    force: List[str] = field(default_factory=list)  # stages to re-run even when cached
    benchmark: bool = False                          # run the benchmark stage (stages with enabled: ${pipeline.benchmark})


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    draft_model: Optional[ModelConfig] = None  # a second model (pipeline=causal_lm_draft), same presets as model
    hw: Any = MISSING                           # the target's schema (hw_schema/<target>), via its preset
    export: ExportConfig = field(default_factory=ExportConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    spd: SpdConfig = field(default_factory=SpdConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


@dataclass
class SamplingConfig:
    """Host-side token choice (runtime.sampling): temperature 0 is greedy."""

    temperature: float = 0.0
    top_k: int = 0                    # 0: off
    top_p: float = 1.0                # 1: off
    repetition_penalty: float = 1.0   # 1: off
    seed: int = 0


@dataclass
class InferConfig(Config):
    """``python -m pipeline.infer``: the build's config plus what to generate (exactly one prompt source)."""

    prompt: Optional[str] = None
    prompts: Optional[List[str]] = None
    prompts_file: Optional[str] = None   # one prompt a line, or a .json list of strings
    chat: bool = False                   # apply the model's chat template
    generation_len: Optional[int] = None  # new tokens at most; null: until EOS or ctx_len
    stream: bool = False                 # print tokens as they come
    adapter: Optional[str] = None        # a LoRA adapter of the package (model.adapters) for every prompt; null: none
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class EmbedConfig(Config):
    """``python -m pipeline.embed``: the build's config (an embedding pipeline) plus the texts (exactly one source)."""

    texts: Optional[List[str]] = None
    texts_file: Optional[str] = None     # one text a line, or a .json list of strings


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    package: Optional[str] = None   # a package folder to serve as it is; null: build (or reuse) the config's


@dataclass
class ServeConfig(Config):
    """``python -m pipeline.serve``: the build's config (or ``serve.package``), where to listen, default sampling."""

    serve: ServeSettings = field(default_factory=ServeSettings)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # a request's temperature/top_p/seed override these


@dataclass
class PublishConfig(Config):
    """``python -m pipeline.publish``: the build's config plus where to publish its package (pipeline.store.publications)."""

    to: Optional[str] = None          # an fsspec URL: a folder, s3://bucket/prefix, ...
    name: Optional[str] = None        # null: <model>-<target>-<first 12 of the package key>
    to_options: Dict[str, Any] = field(default_factory=dict)  # fsspec storage options (e.g. client_kwargs.endpoint_url)


def _package_file(package: str, name: str) -> str:
    """``${package_file:pkg,file}``: a file shipped in an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package_file: package {package!r} is not installed (needed for {name})")
    return str(Path(list(spec.submodule_search_locations)[0]) / name)


_RUN_ID = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"


_registered: set[str] = set()


def register(config_name: str = "config") -> None:
    """Register the schemas (the entry point's, and every target's hw schema) and resolvers, once."""
    from pipeline.discovery import target_schemas

    cs = ConfigStore.instance()
    if "targets" not in _registered:
        for target, schema in target_schemas().items():
            cs.store(group="hw_schema", name=target, node=schema)
        _registered.add("targets")
    schemas = {"config": ("base_config", Config), "infer": ("infer_config", InferConfig),
               "publish": ("publish_config", PublishConfig), "embed": ("embed_config", EmbedConfig),
               "serve": ("serve_config", ServeConfig)}
    if config_name in schemas and config_name not in _registered:
        cs.store(name=schemas[config_name][0], node=schemas[config_name][1])
        _registered.add(config_name)
    if not OmegaConf.has_resolver("package_file"):
        OmegaConf.register_new_resolver("package_file", _package_file)
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: _RUN_ID)
    if not OmegaConf.has_resolver("min"):  # e.g. the cpu preset's prefill chunk: ${min:128,${compile.ctx_len}}
        OmegaConf.register_new_resolver("min", lambda *values: min(values))
    if not OmegaConf.has_resolver("max"):  # e.g. the embedding preset's ctx_len: ${max:${compile.seq_len}} (a list, or one)
        OmegaConf.register_new_resolver("max", lambda *values: max(
            x for v in values for x in (v if isinstance(v, (list, tuple)) or OmegaConf.is_list(v) else [v])))


def check_config(cfg: Any) -> None:
    """What no pass checks: the target is one that is installed."""
    from pipeline.discovery import target_schemas

    targets = sorted(target_schemas())
    if cfg.hw.target not in targets:
        raise UserError(f"hw.target: {cfg.hw.target!r} is not allowed; allowed: {' | '.join(targets)}")
    if cfg.get("spd") is not None:
        check_spd(cfg)
    from pipeline.store.memo import lock_problem

    problem = lock_problem(Path(cfg.store.root))
    if problem:
        raise UserError(problem)


SPD_SCHEMES = ("none", "draft", "pld", "multiproj")


def check_spd(cfg: Any) -> None:
    """spd.* against the compile config: K from spd alone, a prefill that holds K+1 tokens."""
    spd = cfg.spd
    if spd.name not in SPD_SCHEMES:
        raise UserError(f"spd.name: {spd.name!r} is not allowed; allowed: {' | '.join(SPD_SCHEMES)} (spd=<scheme>)")
    if spd.name == "none":
        return
    from runtime.package_format import speculative_ks

    k = OmegaConf.to_container(spd, resolve=True)["num_speculative_tokens"]
    try:
        ks = speculative_ks(k, "spd.num_speculative_tokens")
    except ValueError as e:
        raise UserError(str(e)) from None
    if ks is None:
        raise UserError(f"spd.num_speculative_tokens: None is not allowed with spd={spd.name}; allowed: an integer >= 1, "
                        "or a list of distinct such integers")
    compiled = OmegaConf.to_container(cfg.compile, resolve=True)["num_speculative_tokens"]
    if compiled != k:
        raise UserError(f"compile.num_speculative_tokens: {compiled!r} is not allowed with spd={spd.name}; allowed: "
                        f"{k!r} (spd.num_speculative_tokens is the one source of K)")
    if cfg.compile.prefill_seq_len < max(ks) + 1:
        raise UserError(f"compile.prefill_seq_len: {cfg.compile.prefill_seq_len!r} is not allowed with "
                        f"spd.num_speculative_tokens {k!r}; allowed: >= {max(ks) + 1} (K+1)")
    if spd.name == "pld" and not (isinstance(spd.max_ngram_size, int) and spd.max_ngram_size >= 1):
        raise UserError(f"spd.max_ngram_size: {spd.max_ngram_size!r} is not allowed; allowed: an integer >= 1")
