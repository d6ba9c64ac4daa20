"""Before anything runs: every configuration the command line asks for is composed (and, for a
sweep, its plan checked), and the first error becomes one line (``key: value ... allowed: ...``)."""
from __future__ import annotations

import itertools
import re
from typing import Any, Sequence

from omegaconf import OmegaConf

from pipeline.overrides import parser, rewrite_argv

# A sweep's combinations checked up front; beyond this, a sample holding every value of every swept key.
MAX_SWEEP_CHECKS = 64


def precheck_overrides(argv: Sequence[str], note: Any = None, config_name: str = "config") -> str | None:
    """Compose every configuration the command line asks for; the first error as one line.

    A sweep (``-m``) also gets each combination's plan checked (the passes' check hooks, no
    hub lookups), so a bad point stops the sweep before any job runs. Up to MAX_SWEEP_CHECKS
    combinations are all checked; beyond, a sample holding every swept value at least once,
    and ``note`` (default: stderr) is told so; each job still checks its own.
    """
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
        return one_line(exc, config_name)
    checked = combos if len(combos) <= MAX_SWEEP_CHECKS else _sample(combos)
    if len(checked) < len(combos):
        import sys

        (note or (lambda m: print(m, file=sys.stderr)))(
            f"note: checked {len(checked)} of {len(combos)} combinations before launching (every value of "
            "every swept key at least once); each job checks its own and exits 2 on bad input")
    from pipeline.api import compose
    from pipeline.pass_api import UserError
    from pipeline.plan import prepare

    for i, combo in enumerate(checked):
        try:
            cfg = compose(combo, config_name=args.config_name or config_name)
        except Exception as exc:  # noqa: BLE001
            return one_line(exc, config_name)
        if args.multirun and i == 0 and cfg.get("sweep") is not None:
            problem = _report_choice(cfg, combos)
            if problem:
                return problem
        if args.multirun and not cfg.pipeline.show_graph:
            try:
                prepare(cfg, resolve=False)
            except UserError as exc:
                return f"{exc} (sweep point: {' '.join(combo)})"
    return None


def _sample(combos: list[list[str]]) -> list[list[str]]:
    """The first MAX_SWEEP_CHECKS combinations after a set that holds every override value once."""
    picked: list[list[str]] = []
    seen: set[str] = set()
    for combo in combos:
        if not set(combo) <= seen:
            picked.append(combo)
            seen |= set(combo)
    for combo in combos:
        if len(picked) >= MAX_SWEEP_CHECKS:
            break
        if combo not in picked:
            picked.append(combo)
    return picked


def _report_choice(cfg: Any, combos: list[list[str]]) -> str | None:
    """The report's metric and axes (sweep.*) against the swept keys, before any job runs."""
    from pipeline.report import check_choice

    values: dict[str, set[str]] = {}
    for combo in combos:
        for item in combo:
            key, _, value = item.lstrip("+~").partition("=")
            values.setdefault(key, set()).add(value)
    swept = [k for k, v in values.items() if len(v) > 1] or list(values)
    try:
        check_choice(cfg.sweep.metric, cfg.sweep.x, cfg.sweep.y, swept)
    except ValueError as e:
        return str(e)
    return None


def _combinations(overrides: list[str]) -> list[list[str]]:
    choices = []
    for o in parser().parse_overrides(overrides):
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(c) for c in itertools.product(*choices)]


def one_line(exc: BaseException, config_name: str = "config") -> str:
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
    from pipeline.plan import type_mismatch

    if key and type_mismatch(cause):
        return type_mismatch(cause)
    m = re.match(r"Key '([^']+)' (?:is )?not in (?:struct|'(\w+)')", first)
    if key and m:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = _keys_of(parent, config_name)
        return f"{key}: not a config key; allowed keys{' of ' + parent if parent else ''}: {allowed}"
    if key and cause is not exc:  # OmegaConf refused the value for its key
        from pipeline.plan import config_error

        return config_error(cause)
    return " ".join(text.split("\n")[:1]) or type(exc).__name__


def _keys_of(node_path: str, config_name: str = "config") -> str:
    from pipeline.api import compose

    try:
        root = compose([], config_name=config_name)
        node = OmegaConf.select(root, node_path) if node_path else root
        return ", ".join(node.keys())
    except Exception:  # noqa: BLE001
        return "see `python -m pipeline --cfg job`"
