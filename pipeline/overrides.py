"""Command-line overrides: dict values replace (not merge), and Hydra's errors become one line.

Hydra merges ``key={...}`` into the preset's dict key by key (and struct mode rejects new
keys), but a dict given for ``model.hf_config`` must replace the preset's whole. So dict
overrides are passed to Hydra as force-adds (``++key={...}``) and set again, by replacement,
on the composed config.
"""
from __future__ import annotations

import itertools
import re
from typing import Any, Sequence

from omegaconf import OmegaConf, open_dict

MAX_SWEEP_CHECKS = 32


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _is_dict_override(text: str) -> bool:
    from hydra.core.override_parser.types import OverrideType

    try:
        (o,) = _parser().parse_overrides([text])
    except Exception:  # noqa: BLE001 - Hydra reports it properly later
        return False
    return o.type == OverrideType.CHANGE and not o.is_sweep_override() and isinstance(o.value(), dict)


def rewrite_argv(argv: Sequence[str]) -> list[str]:
    """Turn ``key={...}`` into ``++key={...}`` so Hydra accepts keys the preset lacks."""
    return ["++" + a if not a.startswith("-") and "=" in a and _is_dict_override(a) else a for a in argv]


def replace_dicts(cfg: Any, overrides: Sequence[str]) -> None:
    """Set every dict-valued override on ``cfg`` by replacement."""
    from hydra.core.override_parser.types import OverrideType

    for o in _parser().parse_overrides(list(overrides)):
        if o.type in (OverrideType.CHANGE, OverrideType.FORCE_ADD) and not o.is_sweep_override():
            value = o.value()
            if isinstance(value, dict) and o.package is None:
                with open_dict(cfg):
                    OmegaConf.update(cfg, o.key_or_group, value, merge=False, force_add=True)


def precheck_overrides(argv: Sequence[str]) -> str | None:
    """Compose every configuration the command line asks for; the first error as one line."""
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(list(argv))
    except SystemExit:
        return None  # argparse already said why
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return None
    overrides = rewrite_argv(args.overrides)
    try:
        combos = _combinations(overrides) if args.multirun else [overrides]
    except Exception as exc:  # noqa: BLE001
        return one_line(exc)
    from pipeline.api import compose

    for combo in combos[:MAX_SWEEP_CHECKS]:
        try:
            compose(combo, config_name=args.config_name or "config")
        except Exception as exc:  # noqa: BLE001
            return one_line(exc)
    return None


def _combinations(overrides: list[str]) -> list[list[str]]:
    choices = []
    for o in _parser().parse_overrides(overrides):
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(c) for c in itertools.product(*choices)]


def one_line(exc: BaseException) -> str:
    """Hydra's and OmegaConf's composition errors, as 'key: value is not allowed; allowed: ...'."""
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(exc)
    if isinstance(exc, MissingConfigException):
        m = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], re.M)
        if m:
            return f"{m.group(1)}: {m.group(2)!r} is not a preset; allowed: {', '.join(options) or 'none found'}"
    if isinstance(exc, OverrideParseException):
        lines = text.splitlines()
        detail = lines[1] if len(lines) > 1 else ""
        return f"{lines[0]}: {detail[:120]}; allowed: key=value in Hydra's override grammar"
    cause = exc.__cause__ or exc
    key = getattr(cause, "full_key", None)
    first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    m = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", first)
    if key and m:
        return f"{key}: {m.group(1)!r} is not allowed; allowed: a value of type {m.group(2)}"
    m = re.match(r"Key '([^']+)' (?:is )?not in (?:struct|'(\w+)')", first)
    if key and m:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = _keys_of(parent)
        return f"{key}: not a config key; allowed keys{' of ' + parent if parent else ''}: {allowed}"
    return " ".join(text.split("\n")[:1]) or type(exc).__name__


def _keys_of(node_path: str) -> str:
    from pipeline.api import compose

    try:
        node = OmegaConf.select(compose([]), node_path) if node_path else compose([])
        return ", ".join(node.keys())
    except Exception:  # noqa: BLE001
        return "see `python -m pipeline --cfg job`"
