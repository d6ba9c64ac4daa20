"""The compiled shapes of a causal LM ("specializations"), planned once from the compile config.

Both targets build exactly these shapes: ``compile_ort`` one fixed-shape ONNX graph per
entry, ``compile_ai100`` one entry of the compiler's specializations.json per entry; the
package records them with their roles (``specializations``: runtime.package_format.Specialization).
Standard library only (imported by the passes' cheap hooks).

``plan`` returns ``[{symbol: int}]``, prefill first, then the decode entries:

- causal LM: prefill ``{batch_size, seq_len=prefill_seq_len, ctx_len}``, decode
  ``{batch_size, seq_len=1, ctx_len}``; a single entry when prefill_seq_len is 1 (the
  seq_len-1 shape serves prefill token by token and decode).
- continuous batching (``full_batch_size``): prefill ``{batch_size=1, seq_len, ctx_len,
  full_batch_size}``, decode ``{batch_size=full_batch_size, seq_len=1, ctx_len,
  full_batch_size}``; always two entries (their batch sizes differ). compile.batch_size
  must be 1 (a prefill runs one sequence, placed by ``batch_index``).
- speculative target (``num_speculative_tokens`` K, or a list of K): prefill adds
  ``num_logits_to_keep=1``; one decode entry per K, ``seq_len = num_logits_to_keep = K+1``,
  in the order given.

Names (``names``; the named form of specializations.json and compile_ort's file names):
the prefill entry is ``Prefill``; the first decode entry is ``Decode``; each further decode
entry (a list of K) is ``Decode_K<K>``, e.g. K = [2, 4]: ``Prefill, Decode, Decode_K4``.
The single entry of prefill_seq_len 1 is ``Decode``.

An encoder's graph (an embedding model: ``encoder_plan``) has one entry per length of
``compile.seq_len`` (one length or a list), ``{batch_size, seq_len}``, shortest first, named
``Seq<L>``, each with the role ``embed``; the runtime runs a batch in the shortest that holds it.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from pipeline.pass_api import UserError
from runtime import package_format as fmt

FORMATS = ("flat", "named")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def plan(batch_size: int, prefill_seq_len: int, ctx_len: int, full_batch_size: int | None = None,
         num_speculative_tokens: int | Iterable[int] | None = None) -> list[dict[str, int]]:
    """The compiled shapes, prefill first; ValueError (one line: key, value, allowed) on bad values."""
    if not is_int(ctx_len) or ctx_len < 1:
        raise ValueError(f"compile.ctx_len: {_show(ctx_len)} is not allowed; allowed: an integer >= 1")
    if not is_int(prefill_seq_len) or not 1 <= prefill_seq_len <= ctx_len:
        raise ValueError(f"compile.prefill_seq_len: {_show(prefill_seq_len)} is not allowed; "
                         f"allowed: 1..{ctx_len} (compile.ctx_len)")
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"compile.batch_size: {_show(batch_size)} is not allowed; allowed: an integer >= 1")
    if full_batch_size is not None:
        if not is_int(full_batch_size) or full_batch_size < 1:
            raise ValueError(f"compile.full_batch_size: {_show(full_batch_size)} is not allowed; "
                             "allowed: an integer >= 1, or null (no continuous batching)")
        if batch_size != 1:
            raise ValueError(f"compile.batch_size: {batch_size} is not allowed; allowed: 1 with "
                             "compile.full_batch_size (continuous batching prefills one sequence at a time)")
    ks = fmt.speculative_ks(num_speculative_tokens)
    if ks is not None and max(ks) + 1 > ctx_len:
        raise ValueError(f"compile.num_speculative_tokens: {_show(num_speculative_tokens)} is not allowed; "
                         f"allowed: K+1 <= {ctx_len} (compile.ctx_len)")

    cb = full_batch_size is not None

    def entry(batch: int, seq_len: int, logits_to_keep: int | None) -> dict[str, int]:
        spec = {"batch_size": batch, "seq_len": seq_len, "ctx_len": ctx_len}
        if cb:
            spec["full_batch_size"] = full_batch_size
        if logits_to_keep is not None:
            spec["num_logits_to_keep"] = logits_to_keep
        return spec

    decode_batch = full_batch_size if cb else batch_size
    if ks is None:
        prefill = entry(1 if cb else batch_size, prefill_seq_len, None)
        if prefill_seq_len == 1 and not cb:
            return [prefill]
        return [prefill, entry(decode_batch, 1, None)]
    return [entry(1 if cb else batch_size, prefill_seq_len, 1), *(entry(decode_batch, k + 1, k + 1) for k in ks)]


def seq_lens(value: Any) -> list[int]:
    """compile.seq_len as a sorted list of distinct lengths; ValueError (one line) on a bad value."""
    lens = list(value) if isinstance(value, (list, tuple)) else [value]
    if not lens or not all(is_int(n) and n >= 1 for n in lens) or len(set(lens)) != len(lens):
        raise ValueError(f"compile.seq_len: {_show(value)} is not allowed; allowed: an integer >= 1, "
                         "or a list of distinct such integers (one compiled length each)")
    return sorted(lens)


def encoder_plan(batch_size: int, seq_len: Any) -> list[dict[str, int]]:
    """An encoder's compiled shapes: one per length, shortest first."""
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"compile.batch_size: {_show(batch_size)} is not allowed; allowed: an integer >= 1")
    return [{"batch_size": batch_size, "seq_len": n} for n in seq_lens(seq_len)]


def encoder_specializations(params: Any) -> tuple[fmt.Specialization, ...]:
    return tuple(fmt.Specialization(f"Seq{spec['seq_len']}", (fmt.EMBED,), spec)
                 for spec in encoder_plan(params.batch_size, params.seq_len))


def specializations(params: Any) -> tuple[fmt.Specialization, ...]:
    """The plan of a compile pass's params (batch_size, prefill_seq_len, ctx_len, full_batch_size,
    num_speculative_tokens), each shape named and given its roles."""
    specs = plan(params.batch_size, params.prefill_seq_len, params.ctx_len, params.full_batch_size,
                 params.num_speculative_tokens)
    out = []
    for spec, name in zip(specs, names(specs)):
        if len(specs) == 1:
            roles, k = (fmt.PREFILL, fmt.DECODE), None
        elif name == "Prefill":
            roles, k = (fmt.PREFILL,), None
        elif "num_logits_to_keep" in spec:
            roles, k = (fmt.DECODE_K,), spec["seq_len"] - 1
        else:
            roles, k = (fmt.DECODE,), None
        out.append(fmt.Specialization(name, roles, spec, k))
    return tuple(out)


def for_graph(folder: Any, params: Any, who: str) -> tuple[fmt.Signature, tuple[fmt.Specialization, ...]]:
    """A compile pass's start: the graph folder's signature, and the shapes to build of it (after
    checking that the graph has the inputs the plan's variants need)."""
    signature = fmt.read_signature(folder)
    if signature.kind == fmt.EMBEDDING:
        return signature, encoder_specializations(params)
    check_variant_inputs(signature, params.full_batch_size, params.num_speculative_tokens, who)
    return signature, specializations(params)


def check_plan(params: Any, facts: Any) -> None:
    """A compile pass's check: the plan's values, and ctx_len within the model's positions (from
    its facts, when known). One-line UserError."""
    try:
        specializations(params)
        lens = encoder_plan(params.batch_size, params.seq_len)
    except ValueError as e:
        raise UserError(str(e)) from None
    limit = getattr(facts, "max_positions", None)
    if limit is not None and params.ctx_len > limit:
        raise UserError(f"compile.ctx_len: {params.ctx_len!r} is not allowed; allowed: 1..{limit} (the model's max positions)")
    if limit is not None and lens[-1]["seq_len"] > limit:
        raise UserError(f"compile.seq_len: {_show(params.seq_len)} is not allowed; allowed: lengths of "
                        f"1..{limit} (the model's max positions)")


# The graph input each variant needs (the export builds it when the compile field is set): its role, and its name by convention.
VARIANT_INPUTS = {"full_batch_size": (fmt.BATCH_INDEX, "batch_index"),
                  "num_speculative_tokens": (fmt.LOGITS_TO_KEEP, "num_logits_to_keep")}


def check_variant_inputs(signature: fmt.Signature, full_batch_size: Any, num_speculative_tokens: Any, who: str) -> None:
    """A continuous-batching or speculative plan needs its graph input (by role); a RuntimeError says which is missing."""
    for key, value in (("full_batch_size", full_batch_size), ("num_speculative_tokens", num_speculative_tokens)):
        role, name = VARIANT_INPUTS[key]
        if key == "full_batch_size" and signature.kv_update == fmt.KV_IN_PLACE:
            continue  # an in-place cache takes its KV rows from the runtime, not from an input
        if value is not None and signature.input(role) is None:
            have = [v.name for v in signature.inputs]
            raise RuntimeError(f"{who}: compile.{key}={_show(value)} needs a graph with a {name!r} input ({role}), "
                               f"but the graph's inputs are {have} (this graph variant was not exported)")


def names(specs: list[dict[str, int]]) -> list[str]:
    """Prefill, Decode, Decode_K<K>...; a single entry is Decode (see the module doc)."""
    if len(specs) == 1:
        return ["Decode"]
    out = ["Prefill", "Decode"]
    for spec in specs[2:]:
        out.append(f"Decode_K{spec['seq_len'] - 1}")
    return out


def to_json(specs: Iterable[Mapping[str, int]], form: str = "flat") -> dict[str, Any]:
    """specializations.json content; every value a string.

    flat: ``{"specializations": [{"batch_size": "1", "seq_len": "32", "ctx_len": "128"}, ...]}``
    named: ``{"specializations": [{"name": "Prefill", "symbols": {...}}, {"name": "Decode", ...}]}``
    """
    if form not in FORMATS:
        raise ValueError(f"hw.specialization_format: {_show(form)} is not allowed; allowed: {' | '.join(FORMATS)}")
    specs = [dict(spec.symbols) if isinstance(spec, fmt.Specialization) else dict(spec) for spec in specs]
    flat = [{k: str(v) for k, v in spec.items()} for spec in specs]
    if form == "flat":
        return {"specializations": flat}
    return {"specializations": [{"name": n, "symbols": s} for n, s in zip(names(specs), flat)]}


def from_json(data: Mapping[str, Any]) -> list[dict[str, int]]:
    """The inverse of ``to_json``: flat or named specializations.json content -> [{symbol: int}]."""
    return [{k: int(v) for k, v in entry.get("symbols", entry).items()} for entry in data["specializations"]]


def _show(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)
