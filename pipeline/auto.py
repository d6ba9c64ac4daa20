"""The Python API in the reference library's names: ``AutoModelForCausalLM`` and ``AutoModel``.

    from pipeline import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained("smollm2_135m", hw="cpu")
    m.compile(ctx_len=256)                      # the package's path
    print(m.generate(["My name is"], generation_len=32))

Each call becomes the command line the CLI would run (``m.overrides``; ``m.command()`` prints
it), composed by Hydra and built by the same engine into the same store: what a notebook builds,
``python -m pipeline.infer`` finds cached, and back. Bad arguments raise ``UserError`` (one
line naming the key, the value and what is allowed) before anything runs. Importing this module
imports no torch; a build imports what its passes need.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.config import CONF_DIR
from pipeline.pass_api import UserError

SPD_SCHEMES = ("pld", "multiproj", "draft")
_PLAIN = re.compile(r"[A-Za-z_/][\w/.+@-]*")  # strings Hydra's grammar takes unquoted


def override_value(value: Any) -> str:
    """A Python value in Hydra's override grammar (strings quoted, so paths and prompts pass as they are)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text  # as typed on a command line (a path, a name)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def model_overrides(model: str | Path, role: str = "model") -> list[str]:
    """A preset name, an HF folder, a .gguf file or a hub id (org/name) as overrides of ``role``."""
    name = str(model)
    if (CONF_DIR / "model" / f"{name}.yaml").is_file():
        return [f"{role}={name}"]
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return [f"{role}.source=gguf", f"{role}.path={override_value(str(path.resolve()))}",
                f"{role}.name={override_value(path.stem)}", f"{role}.tokenizer=null"]
    if path.is_dir():
        return [f"{role}.source=local", f"{role}.path={override_value(str(path.resolve()))}",
                f"{role}.name={override_value(path.resolve().name)}", f"{role}.tokenizer=null"]
    if name.count("/") == 1 and not name.startswith((".", "/")) and not path.exists():
        return [f"{role}.source=hub", f"{role}.hf_id={override_value(name)}",
                f"{role}.name={override_value(name.replace('/', '--'))}", f"{role}.tokenizer=null"]
    presets = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    raise UserError(f"{role}: {name!r} is not allowed; allowed: a preset ({' | '.join(presets)}), an HF model folder, "
                    "a .gguf file, or a hub id (org/name)")


def hw_keys(target: Any) -> list[str]:
    """The keys of a target's hw schema a compile() keyword may set (all but the target's name and compile pass)."""
    import dataclasses

    return [f.name for f in dataclasses.fields(target.hw_schema) if f.name not in ("target", "compile_pass")]


def targets_with(hw_key: str) -> str:
    """'only with an X target (hw=<presets>)': the targets whose hw schema has the key."""
    from pipeline.config import hw_presets
    from pipeline.discovery import targets

    having = {name: t for name, t in targets().items() if hw_key in hw_keys(t)}
    presets = sorted(p for p, t in hw_presets().items() if t in having)
    titles = " or ".join(t.title for t in having.values()) or "no installed"
    article = "an" if titles[0] in "AEIOUaeiou" else "a"
    return f"only with {article} {titles} target (hw={' | '.join(presets)})"


class _Built:
    """What both classes share: the overrides so far, composing, building, the package."""

    config_name = "config"
    pipeline: str | None = None
    # compile() keyword -> config key, beyond the targets' hw keys (a keyword that names one sets hw.<keyword>,
    # for the targets that have it)
    compile_keys: dict[str, str] = {}

    def __init__(self, overrides: list[str], echo: Any = None):
        self._base = overrides
        self._compiled: list[str] = []
        self._package: Path | None = None
        self.echo = echo if echo is not None else (lambda line: print(line, file=sys.stderr, flush=True))

    @property
    def overrides(self) -> list[str]:
        """The command-line overrides this model's next build runs with."""
        return [*self._base, *self._compiled]

    def command(self, module: str = "pipeline") -> str:
        """The equivalent command line (``module`` = pipeline | pipeline.infer | pipeline.embed | pipeline.serve)."""
        import shlex

        return " ".join(["python", "-m", module, *(shlex.quote(o) for o in self.overrides)])

    def compose(self, config_name: str | None = None, extra: Sequence[str] = ()) -> Any:
        from pipeline.api import compose
        from pipeline.precheck import precheck_overrides

        name = config_name or self.config_name
        overrides = [*self.overrides, *extra]
        problem = precheck_overrides(overrides, config_name=name)
        if problem:
            raise UserError(problem)
        return compose(overrides, config_name=name)

    def _compile_overrides(self, given: Mapping[str, Any]) -> list[str]:
        cfg = self.compose()
        out = []
        for arg, value in given.items():
            if value is None:
                continue
            from pipeline.discovery import targets

            every_hw_key = list(dict.fromkeys(k for t in targets().values() for k in hw_keys(t)))
            key = self.compile_keys.get(arg) or (f"hw.{arg}" if arg in every_hw_key else None)
            if key is None:
                allowed = list(dict.fromkeys([*self.compile_keys, *every_hw_key]))
                raise UserError(f"compile: {arg}={value!r} is not allowed; allowed: {', '.join(allowed)} "
                                "(other config keys: from_pretrained(..., overrides=[...]))")
            if key.startswith("hw.") and key.split(".", 1)[1] not in cfg.hw:
                raise UserError(f"{arg}: {value!r} is not allowed for hw={cfg.hw.target!r}; allowed: "
                                f"{targets_with(key.split('.', 1)[1])}")
            out.append(f"{key}={override_value(value)}")
        return out

    def _compile_with(self, compiled: list[str]) -> Path:
        """Build the package with ``compiled`` as the compile overrides; they stay only if it builds."""
        previous, self._compiled = self._compiled, compiled
        try:
            cfg = self.compose()
            self._package = self._build(cfg, self._roles(cfg)).package
        except BaseException:
            self._compiled = previous
            raise
        return self._package

    def _roles(self, cfg: Any) -> tuple[str, ...]:
        from pipeline.infer import roles_of

        return roles_of(cfg)

    def _build(self, cfg: Any, roles: Sequence[str] = ("model",)) -> Any:
        from pipeline.api import build

        result = build(cfg, echo=self.echo, goals=("package",), roles=roles, check_packages=True)
        if not result.ok or result.package is None:
            failed = next((s for s in result.stages if s.status == "failed"), None)
            raise RuntimeError(f"stage {failed.name if failed else '?'} failed: {failed.error if failed else 'no package'}")
        return result

    def validate(self) -> dict[str, Any]:
        """Build everything, validation included (as ``python -m pipeline``); the validation result.
        Raises RuntimeError when a stage (the validation gate included) fails."""
        from pipeline.api import build

        result = build(self.compose(), echo=self.echo)
        if not result.ok:
            failed = next(s for s in result.stages if s.status == "failed")
            raise RuntimeError(f"stage {failed.name} failed: {failed.error}")
        return result.validation or {}


class AutoModelForCausalLM(_Built):
    """A causal LM to build, compile and generate with."""

    config_name = "infer"
    compile_keys = {"num_cores": "hw.num_cores", "prefill_seq_len": "compile.prefill_seq_len",
                    "ctx_len": "compile.ctx_len", "batch_size": "compile.batch_size",
                    "full_batch_size": "compile.full_batch_size", "num_speculative_tokens": "spd.num_speculative_tokens"}

    def __init__(self, overrides: list[str], continuous_batching: bool, speculative: str | None, echo: Any = None):
        super().__init__(overrides, echo)
        self.continuous_batching = continuous_batching
        self.speculative = speculative

    @classmethod
    def from_pretrained(cls, model: str | Path, hw: str = "cpu", store_root: str | Path | None = None, *,
                        continuous_batching: bool = False, num_speculative_tokens: int | list[int] | None = None,
                        speculative: str | None = None, draft_model: str | Path | None = None,
                        adapters: Mapping[str, str | Path] | None = None, overrides: Sequence[str] = (),
                        echo: Any = None) -> "AutoModelForCausalLM":
        """``model``: a preset (conf/model), an HF folder, a .gguf file or a hub id; ``hw``: a
        conf/hw preset. ``num_speculative_tokens``: speculative decoding with K proposals by
        ``speculative`` (pld, the default | multiproj | draft, with ``draft_model``); ``adapters``:
        LoRA adapters {name: PEFT folder}; ``overrides``: any other config keys, as on the command line."""
        base = [*model_overrides(model), f"hw={hw}"]
        if store_root is not None:
            base.append(f"store.root={override_value(str(Path(store_root).expanduser().resolve()))}")
        if speculative is not None and speculative not in SPD_SCHEMES:
            raise UserError(f"speculative: {speculative!r} is not allowed; allowed: {' | '.join(SPD_SCHEMES)}")
        if speculative is not None and num_speculative_tokens is None:
            raise UserError(f"num_speculative_tokens: None is not allowed with speculative={speculative!r}; allowed: an "
                            "integer >= 1, or a list of them")
        if draft_model is not None and speculative not in (None, "draft"):
            raise UserError(f"draft_model: {str(draft_model)!r} is not allowed with speculative={speculative!r}; "
                            "allowed: only with speculative='draft'")
        scheme = speculative or ("draft" if draft_model is not None else "pld" if num_speculative_tokens is not None else None)
        if scheme == "draft" and draft_model is None:
            raise UserError("draft_model: None is not allowed with speculative='draft'; allowed: a preset, an HF folder, "
                            "a .gguf file or a hub id")
        if scheme is not None:
            base += [f"spd={scheme}", f"spd.num_speculative_tokens={override_value(num_speculative_tokens)}"]
        if draft_model is not None:
            base += model_overrides(draft_model, "draft_model")
        if adapters:
            base.append(f"model.adapters={override_value({k: str(Path(v).expanduser().resolve()) for k, v in adapters.items()})}")
        model_obj = cls([*base, *overrides], continuous_batching, scheme, echo)
        model_obj.compose()  # bad input stops here, in one line
        return model_obj

    def compile(self, num_cores: int | None = None, prefill_seq_len: int | None = None, ctx_len: int | None = None,
                batch_size: int | None = None, full_batch_size: int | None = None, mxfp6_matmul: bool | None = None,
                **options: Any) -> Path:
        """Build up to the package (no validation: ``validate()``) with these compile settings
        (None: the preset's); the package's path. AI 100 options on the cpu target are refused.
        ``options``: num_speculative_tokens, kv_cache_dtype, num_devices, mos, ols, aic_enable_depth_first."""
        if self.continuous_batching and full_batch_size is None:
            raise UserError("full_batch_size: None is not allowed with continuous_batching=True; allowed: an integer >= 1 "
                            "(the KV slots)")
        if full_batch_size is not None and not self.continuous_batching:
            raise UserError(f"full_batch_size: {full_batch_size!r} is not allowed without continuous_batching; allowed: "
                            "None, or from_pretrained(..., continuous_batching=True)")
        if options.get("num_speculative_tokens") is not None and self.speculative is None:
            raise UserError(f"num_speculative_tokens: {options['num_speculative_tokens']!r} is not allowed here; allowed: "
                            "from_pretrained(..., num_speculative_tokens=K) (the scheme is chosen there)")
        given = {"num_cores": num_cores, "prefill_seq_len": prefill_seq_len, "ctx_len": ctx_len, "batch_size": batch_size,
                 "full_batch_size": full_batch_size, "mxfp6_matmul": mxfp6_matmul, **options}
        return self._compile_with(self._compile_overrides(given))

    def generate(self, prompts: str | Sequence[str], generation_len: int | None = 64, tokenizer: Any = None,
                 stream: bool = False, chat: bool = False, adapter: str | None = None, **sampling: Any) -> Any:
        """Generate for ``prompts`` (compiling first with the preset's settings if ``compile()`` was
        not called); the run's ExecInfo (``.generated_texts``, ``.perf_metrics``; print it).
        ``tokenizer``: an HF tokenizer to use instead of the package's; ``stream``: print tokens as
        they come; ``sampling``: temperature, top_k, top_p, repetition_penalty, seed."""
        from omegaconf import open_dict

        from pipeline.infer import check_generation, generate_with, sampling_params

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise UserError(f"prompts: {prompts!r} is not allowed; allowed: one or more non-empty strings")
        unknown = sorted(set(sampling) - {"temperature", "top_k", "top_p", "repetition_penalty", "seed"})
        if unknown:
            raise UserError(f"generate: {unknown[0]}={sampling[unknown[0]]!r} is not allowed; allowed: generation_len, "
                            "tokenizer, stream, chat, adapter, temperature, top_k, top_p, repetition_penalty, seed")
        cfg = self.compose(extra=[f"sampling.{k}={override_value(v)}" for k, v in sampling.items()])
        with open_dict(cfg):
            cfg.prompts, cfg.generation_len, cfg.stream, cfg.chat, cfg.adapter = prompts, generation_len, stream, chat, adapter
        check_generation(cfg)
        params = sampling_params(cfg)
        result = self._build(cfg, self._roles(cfg))
        self._package = result.package
        return generate_with(cfg, result.package, prompts, params, result.packages.get("draft_model"), tokenizer,
                             verify=False)  # the build checked the bytes of what it took from the store


class AutoModel(_Built):
    """An embedding model (pipeline=embedding): build, compile, encode."""

    config_name = "embed"
    compile_keys = {"num_cores": "hw.num_cores", "seq_len": "compile.seq_len", "batch_size": "compile.batch_size"}

    @classmethod
    def from_pretrained(cls, model: str | Path = "minilm_l6", hw: str = "cpu", store_root: str | Path | None = None, *,
                        pooling: str | None = None, normalize: bool | None = None, overrides: Sequence[str] = (),
                        echo: Any = None) -> "AutoModel":
        """``model``: a preset, an HF (sentence-transformers) folder or a hub id; ``pooling``:
        mean | cls | max | avg | module:function (None: the model's own); ``normalize``: L2 (None: the model's own)."""
        base = [*model_overrides(model), f"hw={hw}", "pipeline=embedding"]
        if store_root is not None:
            base.append(f"store.root={override_value(str(Path(store_root).expanduser().resolve()))}")
        if pooling is not None:
            base.append(f"embedding.pooling={override_value(pooling)}")
        if normalize is not None:
            base.append(f"embedding.normalize={override_value(normalize)}")
        model_obj = cls([*base, *overrides], echo)
        model_obj._embedder = None
        model_obj.compose()
        return model_obj

    def compile(self, num_cores: int | None = None, seq_len: int | list[int] | None = None,
                batch_size: int | None = None, **options: Any) -> Path:
        """Build up to the package with these settings (None: the preset's); its path."""
        self._embedder = None
        return self._compile_with(self._compile_overrides({"num_cores": num_cores, "seq_len": seq_len,
                                                           "batch_size": batch_size, **options}))

    def embed(self, texts: str | Sequence[str]) -> Any:
        """The run (runtime.embed.EmbedRun): ``.embeddings`` [texts, hidden] float32 and ``.metrics``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) and t for t in texts):
            raise UserError(f"texts: {texts!r} is not allowed; allowed: one or more non-empty strings")
        if self._embedder is None:
            from pipeline.infer import check_runnable
            from runtime.embed import Embedder

            package = self._package or self.compile()
            check_runnable(package)
            self._embedder = Embedder(package)  # its own target's session
        return self._embedder.embed(texts)

    def encode(self, texts: str | Sequence[str]) -> Any:
        """The embeddings alone, as sentence-transformers' ``encode``: [texts, hidden] float32."""
        return self.embed(texts).embeddings
