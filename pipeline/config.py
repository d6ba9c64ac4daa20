"""The configuration schema: the engine's own nodes, the root configs of the entry points, registered with Hydra.

The keys of the passes and targets are theirs: each declares them next to its params
(``pass_api.config_schema``) and pipeline/schema.py merges them into the top-level nodes. Each
target's hw schema is its plugin's (``pipeline.targets`` entry points), registered here as
``hw_schema/<target>``, which the hw presets extend. Here: ``store``, ``pipeline``, ``sweep``, the
model roles, and each entry point's own keys (infer, embed, serve, publish). A wrong type, or a
value an Enum does not hold, is caught on composition; ranges and cross-field rules are the
passes' ``check`` hooks, each failure one line naming key, value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import secrets
import time
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from pipeline.pass_api import UserError
from pipeline.report import METRICS

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class StoreConfig:
    root: str = "artifacts"  # the store (relative to the working directory)
    memo: Optional[str] = None  # the local digest memo; null: in the store, or ~/.cache when the store is on NFS
    remote: Optional[str] = None   # a second tier (pipeline.store.remote): an fsspec URL (s3://bucket/prefix, a folder)
    push: bool = False             # push what this run builds to the remote (CI); false: read only
    remote_options: Dict[str, Any] = field(default_factory=dict)  # fsspec storage options (e.g. client_kwargs.endpoint_url)


Metric = StrEnum("Metric", {name: name for name in METRICS})  # what a sweep's heatmap can show


@dataclass
class SweepConfig:
    """The report of a sweep (pipeline.report): the heatmap's metric and axes (swept keys)."""

    metric: Optional[Metric] = None  # null: decode tok/s when benchmarked, else compile s
    x: Optional[str] = None        # null: the first swept key
    y: Optional[str] = None        # null: the next swept key


@dataclass
class PipelineConfig:
    stages: Dict[str, Any] = field(default_factory=dict)  # which stages run and how they connect (set by the pipeline group: conf/pipeline/)
    show_graph: bool = False  # print the stage graph as Mermaid and exit
    force: List[str] = field(default_factory=list)  # stages to re-run even when cached
    benchmark: bool = False                          # run the benchmark stage (stages with enabled: ${pipeline.benchmark})
    evaluate: bool = False                           # run the evaluate stage (python -m pipeline.evaluate sets it)


@dataclass
class SamplingConfig:
    """Host-side token choice (runtime.sampling): temperature 0 is greedy."""

    temperature: float = 0.0  # 0: greedy; otherwise sampling on the host
    top_k: int = 0                    # 0: off
    top_p: float = 1.0                # 1: off
    repetition_penalty: float = 1.0   # 1: off
    seed: int = 0  # each prompt samples from its own generator seeded by (seed, its index)


@dataclass
class InferKeys:
    """``python -m pipeline.infer``: the build's config plus what to generate (exactly one prompt source)."""

    prompt: Optional[str] = None  # one prompt
    prompts: Optional[List[str]] = None  # several prompts (exactly one of prompt, prompts, prompts_file)
    prompts_file: Optional[str] = None   # one prompt a line, or a .json list of strings
    chat: bool = False                   # apply the model's chat template
    generation_len: Optional[int] = None  # new tokens at most; null: until EOS or ctx_len
    stream: bool = False                 # print tokens as they come
    adapter: Optional[str] = None        # a LoRA adapter of the package (model.adapters) for every prompt; null: none
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class EmbedKeys:
    """``python -m pipeline.embed``: the build's config (an embedding pipeline) plus the texts (exactly one source)."""

    texts: Optional[List[str]] = None  # the texts to embed
    texts_file: Optional[str] = None     # one text a line, or a .json list of strings


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"  # the address to listen on
    port: int = 8000  # the port to listen on
    package: Optional[str] = None   # a package folder to serve as it is; null: build (or reuse) the config's


@dataclass
class ServeKeys:
    """``python -m pipeline.serve``: the build's config (or ``serve.package``), where to listen, default sampling."""

    serve: ServeSettings = field(default_factory=ServeSettings)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # a request's temperature/top_p/seed override these


@dataclass
class PublishKeys:
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


# entry point -> (the name of its root schema in the ConfigStore, the dataclass of its own keys)
ENTRY_KEYS = {"config": ("base_config", None), "infer": ("infer_config", InferKeys),
              "publish": ("publish_config", PublishKeys), "embed": ("embed_config", EmbedKeys),
              "serve": ("serve_config", ServeKeys)}
_registered: set[str] = set()


@functools.lru_cache(maxsize=None)
def root_config(config_name: str = "config") -> type:
    """The root dataclass of an entry point: the model roles and hw, every node the passes and
    targets declare, the engine's own nodes, then the entry point's own keys."""
    from pipeline.schema import declared_nodes

    nodes = dict(declared_nodes())
    model = nodes.pop("model")
    fields: list[tuple[str, Any, Any]] = [
        ("model", model, field(default_factory=model)),
        ("draft_model", Optional[model], None),  # a second model (pipeline=causal_lm_draft), same presets as model
        ("hw", Any, MISSING),                    # the target's schema (hw_schema/<target>), via its preset
        *((node, cls, field(default_factory=cls)) for node, cls in nodes.items()),
        ("sweep", SweepConfig, field(default_factory=SweepConfig)),
        ("store", StoreConfig, field(default_factory=StoreConfig)),
        ("pipeline", PipelineConfig, field(default_factory=PipelineConfig)),
    ]
    extra = ENTRY_KEYS[config_name][1]
    if extra is not None:
        types = typing.get_type_hints(extra)
        fields += [(f.name, types[f.name], field(default=f.default, default_factory=f.default_factory))
                   for f in dataclasses.fields(extra)]
    name = "Config" if extra is None else extra.__name__.replace("Keys", "Config")
    return dataclasses.make_dataclass(name, fields)


def register(config_name: str = "config") -> None:
    """Register the schemas (every target's hw schema and presets, the entry point's root) and resolvers, once."""
    from pipeline.discovery import targets

    cs = ConfigStore.instance()
    if "targets" not in _registered:
        for name, target in targets().items():
            cs.store(group="hw_schema", name=name, node=target.hw_schema)
            for preset, node in target.presets.items():  # a plugin's own hw presets (hw=<preset>)
                cs.store(group="hw", name=preset, node=node)
        _registered.add("targets")
    if config_name in ENTRY_KEYS and config_name not in _registered:
        cs.store(name=ENTRY_KEYS[config_name][0], node=root_config(config_name))
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


def hw_presets() -> dict[str, str]:
    """hw preset -> its target: conf/hw/*.yaml (by the hw_schema each extends) and the plugins' own presets."""
    import re

    from pipeline.discovery import targets

    found = {}
    for path in sorted((CONF_DIR / "hw").glob("*.yaml")):
        m = re.search(r"hw_schema/(\w+)", path.read_text())
        if m:
            found[path.stem] = m.group(1)
    for name, target in targets().items():
        found.update({preset: name for preset in target.presets})
    return found


def check_config(cfg: Any) -> None:
    """What no pass checks: the target is one that is installed, spd against compile, the store's lock."""
    from pipeline.target_api import find_target

    try:
        find_target(cfg.hw.target)
    except LookupError as e:
        raise UserError(str(e)) from None
    check_spd(cfg)
    from pipeline.store.memo import lock_problem

    problem = lock_problem(Path(cfg.store.root))
    if problem:
        raise UserError(problem)


def check_spd(cfg: Any) -> None:
    """spd.* against the compile config: K from spd alone, a prefill that holds K+1 tokens."""
    spd = cfg.spd
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
