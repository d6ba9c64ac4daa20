"""The package format: what a built package holds, shared by the passes that write one and the runtime.

A package is a folder::

    manifest.json   format, kind, model, target, the program (its target, signature, specializations,
                    files and options), build config, library versions, every file's sha256
    tokenizer/      a Hugging Face tokenizer folder (with the model's config.json)
    <program files> ONNX graphs and weights, and a target's compiled program and its inputs

A compile stage's output (not yet a package) holds its program files and ``program.json``, the
``program`` part of a manifest. A graph folder (export, rewrite) holds ``model.onnx``, its
external weights and ``io.json``, the graph's :class:`Signature`.

Roles, not names: every graph input and output has a role (``token_ids``, ``positions``,
``past_kv`` of a layer, ...), and every specialization (compiled shape) has its roles
(``prefill``, ``decode``, ``decode_k`` with its K). Readers look things up by role.
The program names its *target*: the runtime opens a package with that target's session
(runtime.sessions, by entry point). Standard library only: the passes' cheap hooks and a package without the build code both use it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

FORMAT_VERSION = 3  # 3: the program names its target and its compiled binary (2: a backend and a qpc)
MANIFEST = "manifest.json"
PROGRAM = "program.json"
SIGNATURE = "io.json"
TOKENIZER_DIR = "tokenizer"

# ---- roles of graph inputs and outputs
TOKEN_IDS = "token_ids"            # [batch, seq_len] int64
POSITIONS = "positions"            # [batch, seq_len] int64; -1 marks padding (writes nothing)
PAST_KV = "past_kv"                # [kv_batch, kv_heads, ctx_len, head_dim] of one layer (``layer``, ``kv``)
BATCH_INDEX = "batch_index"        # [batch, 1] int64: the KV row of each input row (continuous batching)
LOGITS_TO_KEEP = "logits_to_keep"  # [n, 1]: only its length n matters (speculative target)
ADAPTER_IDS = "adapter_ids"        # [batch, 1] int64: each row's LoRA slot (0: none; adapter i: i + 1)
LORA_WEIGHT = "lora_weight"        # [slots, in, rank] (lora_A.<module>) or [slots, rank, out] (lora_B.<module>)
ATTENTION_MASK = "attention_mask"  # [batch, seq_len] (encoders)
LOGITS = "logits"                  # [batch, n kept positions, vocab]
RETAINED_KV = "retained_kv"        # the updated ``past_kv`` of a layer (``layer``, ``kv``)
POOLED_OUTPUT = "pooled_output"    # [batch, hidden] (embeddings)
HIDDEN_STATES = "hidden_states"    # [batch, seq_len, hidden]
PROPOSALS = "proposals"            # [batch, n kept positions, heads] int64: a multi-projection speculator's next tokens
INPUT_ROLES = (TOKEN_IDS, POSITIONS, PAST_KV, BATCH_INDEX, LOGITS_TO_KEEP, ADAPTER_IDS, LORA_WEIGHT, ATTENTION_MASK)
OUTPUT_ROLES = (LOGITS, RETAINED_KV, POOLED_OUTPUT, HIDDEN_STATES, PROPOSALS)
KV_KINDS = ("key", "value")

# ---- how a graph updates its past_kv (Signature.kv_update)
KV_SCATTER = "scatter"    # retained_kv outputs are the whole updated cache: feed them back as the next past
KV_IN_PLACE = "in_place"  # the graph writes only the new rows; bind past and retained to one buffer, no copy

# ---- roles of specializations (compiled shapes)
PREFILL = "prefill"    # takes the prompt, a chunk of seq_len tokens at a time
DECODE = "decode"      # one new token per sequence
DECODE_K = "decode_k"  # a speculative step: K proposed tokens + 1, logits for each (``k``)
EMBED = "embed"        # an encoder's pass over a batch of texts of up to seq_len tokens
SPEC_ROLES = (PREFILL, DECODE, DECODE_K, EMBED)

# What runs a program's ONNX graphs (the program itself, or a device program's ONNX view)
ONNXRUNTIME = "onnxruntime"

# ---- kinds of packages (Manifest.kind)
CAUSAL_LM = "causal_lm"
EMBEDDING = "embedding"

def speculative_ks(value: Any, key: str = "compile.num_speculative_tokens") -> list[int] | None:
    """None, or the list of K (an int K is a list of one); ValueError naming ``key`` on a bad value."""
    if value is None:
        return None
    ks = list(value) if isinstance(value, (list, tuple)) else [value]
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks) or len(set(ks)) != len(ks):
        shown = list(value) if isinstance(value, tuple) else value
        raise ValueError(f"{key}: {shown!r} is not allowed; allowed: an integer >= 1, or a list of distinct such integers")
    return ks


@dataclass(frozen=True)
class IoValue:
    """One graph input or output: its name in the graph, its role, dtype and shape (named axes as str)."""

    name: str
    role: str
    dtype: str
    shape: tuple[int | str, ...]
    layer: int | None = None  # past_kv / retained_kv
    kv: str | None = None     # "key" | "value"

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "role": self.role, "dtype": self.dtype, "shape": list(self.shape)}
        if self.layer is not None:
            out.update(layer=self.layer, kv=self.kv)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "IoValue":
        return cls(d["name"], d["role"], d["dtype"], tuple(d["shape"]), d.get("layer"), d.get("kv"))


@dataclass(frozen=True)
class Signature:
    """A graph's inputs and outputs with their roles, the model's dims (num_layers, vocab_size, ...),
    and how it updates its KV cache (``kv_update``: KV_SCATTER or KV_IN_PLACE)."""

    inputs: tuple[IoValue, ...]
    outputs: tuple[IoValue, ...]
    dims: Mapping[str, int] = field(default_factory=dict)
    kv_update: str = KV_SCATTER

    def input(self, role: str) -> IoValue | None:
        """The single input of a role, or None when the graph has none."""
        return next((v for v in self.inputs if v.role == role), None)

    def output(self, role: str) -> IoValue | None:
        return next((v for v in self.outputs if v.role == role), None)

    def has(self, role: str) -> bool:
        return self.input(role) is not None or self.output(role) is not None

    @property
    def kind(self) -> str:
        """EMBEDDING for an encoder's graph (a pooled output), else CAUSAL_LM."""
        return EMBEDDING if self.output(POOLED_OUTPUT) is not None else CAUSAL_LM

    def past_kv(self) -> list[IoValue]:
        """The KV inputs, layer by layer, key before value."""
        return sorted((v for v in self.inputs if v.role == PAST_KV), key=lambda v: (v.layer, KV_KINDS.index(v.kv)))

    def retained(self, past: IoValue) -> IoValue:
        """The output that carries the updated value of a ``past_kv`` input."""
        for v in self.outputs:
            if v.role == RETAINED_KV and (v.layer, v.kv) == (past.layer, past.kv):
                return v
        raise KeyError(f"the graph has no retained_kv output for layer {past.layer} {past.kv} ({past.name})")

    def with_shapes(self, shapes: Mapping[str, tuple[Any, ...]], dtypes: Mapping[str, str] | None = None) -> "Signature":
        """The same roles with shapes (and dtypes) read back from a rewritten graph, by name."""
        def redo(v: IoValue) -> IoValue:
            return IoValue(v.name, v.role, (dtypes or {}).get(v.name, v.dtype), tuple(shapes.get(v.name, v.shape)),
                           v.layer, v.kv)

        return Signature(tuple(map(redo, self.inputs)), tuple(map(redo, self.outputs)), dict(self.dims), self.kv_update)

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [v.to_json() for v in self.inputs], "outputs": [v.to_json() for v in self.outputs],
                "dims": dict(self.dims), "kv_update": self.kv_update}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Signature":
        return cls(tuple(IoValue.from_json(v) for v in d["inputs"]),
                   tuple(IoValue.from_json(v) for v in d["outputs"]), dict(d.get("dims", {})),
                   d.get("kv_update", KV_SCATTER))


@dataclass(frozen=True)
class Specialization:
    """One compiled shape: its name (Prefill, Decode, Decode_K4), roles and symbol values."""

    name: str
    roles: tuple[str, ...]
    symbols: Mapping[str, int]
    k: int | None = None  # decode_k: the number of proposed tokens it scores (seq_len = k + 1)
    upper_bound: bool = False  # its graph takes any batch and length up to these: no padding needed

    @property
    def batch_size(self) -> int:
        return int(self.symbols["batch_size"])

    @property
    def seq_len(self) -> int:
        return int(self.symbols["seq_len"])

    @property
    def ctx_len(self) -> int:
        return int(self.symbols["ctx_len"])

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "roles": list(self.roles), "symbols": dict(self.symbols)}
        if self.k is not None:
            out["k"] = self.k
        if self.upper_bound:
            out["upper_bound"] = True
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Specialization":
        return cls(d["name"], tuple(d["roles"]), {k: int(v) for k, v in d["symbols"].items()}, d.get("k"),
                   bool(d.get("upper_bound", False)))


@dataclass(frozen=True)
class Program:
    """What runs: the target that runs it, the graph's signature, the compiled shapes, and the files.

    ``target``: the target whose session opens it (the manifest's ``target``).
    ``graphs``: specialization name -> the ONNX file ONNX Runtime runs for it (a fixed-shape
    graph each, or one dynamic graph for all): the program itself, or its ONNX view where a
    target compiles it further. ``weights``: their external data files. ``options``: ONNX
    Runtime session options. ``binary``: the target's compiled program (a file or folder of
    the package), which its session loads; None where the ONNX graphs are the program.
    ``validation_target``: what validating the package here compares, ``package`` (the program
    itself) or ``onnx`` (the ONNX handed to a compiler). ``build``: the settings it was compiled
    with, ``{"hw": {...}, "compile": {...}}`` (portable: no paths).
    """

    target: str
    signature: Signature
    specializations: tuple[Specialization, ...]
    graphs: Mapping[str, str] = field(default_factory=dict)
    weights: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    binary: str | None = None
    validation_target: str = "package"
    build: Mapping[str, Any] = field(default_factory=dict)  # the hw.* and compile.* settings it was built with

    def spec(self, role: str) -> Specialization | None:
        """The first specialization with a role (prefill, decode), or None."""
        return next((s for s in self.specializations if role in s.roles), None)

    def embed_spec(self, seq_len: int) -> Specialization:
        """The smallest encoder shape that holds ``seq_len`` tokens (ValueError when none does)."""
        fits = [s for s in self.specializations if EMBED in s.roles and s.seq_len >= seq_len]
        if not fits:
            longest = max((s.seq_len for s in self.specializations if EMBED in s.roles), default=0)
            raise ValueError(f"no compiled length holds {seq_len} tokens; the longest is {longest}")
        return min(fits, key=lambda s: s.seq_len)

    def decode_spec(self, tokens: int = 1) -> Specialization:
        """The decode shape for ``tokens`` new tokens per sequence: a plain decode when there is
        one and it fits, else the smallest speculative shape that holds them (padding has position -1)."""
        plain = [s for s in self.specializations if DECODE in s.roles and s.seq_len >= tokens]
        if plain:
            return min(plain, key=lambda s: s.seq_len)
        spec = [s for s in self.specializations if DECODE_K in s.roles and s.seq_len >= tokens]
        if not spec:
            raise ValueError(f"no decode specialization takes {tokens} tokens; have "
                             f"{[s.name for s in self.specializations]}")
        return min(spec, key=lambda s: s.seq_len)

    @property
    def kv_batch_size(self) -> int:
        """Rows of the KV cache: full_batch_size with continuous batching, else the batch size."""
        first = self.specializations[0].symbols
        return int(first.get("full_batch_size") or first["batch_size"])

    @property
    def ctx_len(self) -> int:
        return self.specializations[0].ctx_len

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "signature": self.signature.to_json(),
                "specializations": [s.to_json() for s in self.specializations], "graphs": dict(self.graphs),
                "weights": list(self.weights), "options": dict(self.options), "binary": self.binary,
                "validation_target": self.validation_target, "build": dict(self.build)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Program":
        return cls(d["target"], Signature.from_json(d["signature"]),
                   tuple(Specialization.from_json(s) for s in d["specializations"]), dict(d.get("graphs", {})),
                   tuple(d.get("weights", ())), dict(d.get("options", {})), d.get("binary"),
                   d.get("validation_target", "package"), dict(d.get("build", {})))


@dataclass(frozen=True)
class Manifest:
    """manifest.json: the package's description; ``files`` maps every other file to {sha256, bytes}."""

    kind: str
    model: Mapping[str, Any]
    target: str
    program: Program
    config: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "kind": self.kind, "model": dict(self.model), "target": self.target,
                "program": self.program.to_json(), "config": dict(self.config), "versions": dict(self.versions),
                "files": {k: dict(v) for k, v in self.files.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Manifest":
        if d.get("format") != FORMAT_VERSION:
            raise ValueError(f"package format {d.get('format')!r} is not supported; this runtime reads format "
                             f"{FORMAT_VERSION} (rebuild the package)")
        return cls(d["kind"], dict(d["model"]), d["target"], Program.from_json(d["program"]), dict(d.get("config", {})),
                   dict(d.get("versions", {})), dict(d.get("files", {})), d["format"])


# ---- reading and writing
def write_json(path: Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_signature(folder: Path) -> Signature:
    return Signature.from_json(read_json(Path(folder) / SIGNATURE))


def write_signature(folder: Path, signature: Signature) -> None:
    write_json(Path(folder) / SIGNATURE, signature.to_json())


def read_program(folder: Path) -> Program:
    """The program of a package (its manifest) or of a compile stage's output (program.json)."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return read_manifest(folder).program
    if (folder / PROGRAM).is_file():
        return Program.from_json(read_json(folder / PROGRAM))
    raise FileNotFoundError(f"{folder}: neither {MANIFEST} nor {PROGRAM}; not a package or a compiled program")


def write_program(folder: Path, program: Program) -> None:
    write_json(Path(folder) / PROGRAM, program.to_json())


def read_manifest(folder: Path) -> Manifest:
    return Manifest.from_json(read_json(Path(folder) / MANIFEST))


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json(Path(folder) / MANIFEST, manifest.to_json())


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(folder: Path, skip: Iterable[str] = (MANIFEST,)) -> dict[str, dict[str, Any]]:
    """{relative path: {"sha256", "bytes"}} of every file under folder (the manifest's ``files``)."""
    folder, skip = Path(folder), set(skip)
    return {p.relative_to(folder).as_posix(): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() not in skip}


# ---- checking a package against its manifest
VERIFY_MAX_BYTES = 2 << 30  # packages up to this size are checked on load by default (SHA-256 reads ~0.5 GB/s here)


class PackageDamaged(ValueError):
    """A package file differs from its manifest (missing, resized, or other content)."""


def damaged_files(folder: Path, manifest: Manifest | None = None) -> list[str]:
    """One line per file that differs from the manifest's sha256 and size (empty: intact)."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    problems = []
    for rel, entry in sorted(manifest.files.items()):
        path = folder / rel
        try:
            size = path.stat().st_size
        except OSError as e:
            problems.append(f"{rel}: {e.strerror.lower()}")
            continue
        if size != entry.get("bytes"):
            problems.append(f"{rel}: {size} bytes, the manifest says {entry.get('bytes')}")
        elif file_sha256(path) != entry.get("sha256"):
            problems.append(f"{rel}: its sha256 differs from the manifest's")
    return problems


def check_package(folder: Path, verify: bool | None = None) -> None:
    """PackageDamaged (one line) if a file differs from the manifest. ``verify`` None: check
    packages of up to VERIFY_MAX_BYTES; True: always; False: never."""
    manifest = read_manifest(folder)
    if verify is None:
        verify = sum(int(e.get("bytes", 0)) for e in manifest.files.values()) <= VERIFY_MAX_BYTES
    if verify:
        problems = damaged_files(folder, manifest)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise PackageDamaged(f"{folder}: damaged: {problems[0]}{more}; rebuild it (or fetch it again)")
