"""Command-line overrides: dict values replace (not merge).

Hydra merges ``key={...}`` into the preset's dict key by key (and struct mode rejects new
keys), but a dict given for ``model.hf_config`` must replace the preset's whole. So dict
overrides are passed to Hydra as force-adds (``++key={...}``) and set again, by replacement,
on the composed config.
"""
from __future__ import annotations

from typing import Any, Sequence

from omegaconf import OmegaConf, open_dict


def parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _is_dict_override(text: str) -> bool:
    from hydra.core.override_parser.types import OverrideType

    try:
        (o,) = parser().parse_overrides([text])
    except Exception:  # noqa: BLE001 - Hydra reports it properly later
        return False
    return o.type == OverrideType.CHANGE and not o.is_sweep_override() and isinstance(o.value(), dict)


def rewrite_argv(argv: Sequence[str]) -> list[str]:
    """Turn ``key={...}`` into ``++key={...}`` so Hydra accepts keys the preset lacks."""
    return ["++" + a if not a.startswith("-") and "=" in a and _is_dict_override(a) else a for a in argv]


def replace_dicts(cfg: Any, overrides: Sequence[str]) -> None:
    """Set every dict-valued override on ``cfg`` by replacement."""
    from hydra.core.override_parser.types import OverrideType

    for o in parser().parse_overrides(list(overrides)):
        if o.type in (OverrideType.CHANGE, OverrideType.FORCE_ADD) and not o.is_sweep_override():
            value = o.value()
            if isinstance(value, dict) and o.package is None:
                with open_dict(cfg):
                    OmegaConf.update(cfg, o.key_or_group, value, merge=False, force_add=True)
