"""The library surface: compose a config, build it. ``python -m pipeline`` is a thin shell over these."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.config import CONF_DIR, register
from pipeline.executor import BuildResult, Executor
from pipeline.instruments import Instrument, default_instruments
from pipeline.plan import check_preconditions, prepare


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> Any:
    """The config ``python -m pipeline <overrides>`` would run (Hydra's compose API)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from pipeline.overrides import replace_dicts, rewrite_argv

    register(config_name)
    overrides = rewrite_argv(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides)
    replace_dicts(cfg, overrides)
    return cfg


def build(cfg: Any, echo: Callable[[str], None] = print, run_dir: Path | None = None,
          instruments: Sequence[Instrument] = (), goals: Sequence[str] = (),
          roles: Sequence[str] = ("model",)) -> BuildResult:
    """Build every stage of ``cfg`` (or only what ``goals``, e.g. ``("package",)``, needs for ``roles``);
    raises pipeline.pass_api.UserError on bad input (nothing run).

    Around each pass run the default instruments (progress lines through ``echo``, time and
    memory, the test fault hook, ``pipeline.force``), then ``instruments``.
    """
    plan = prepare(cfg, goals=goals, roles=roles)
    executor = Executor(plan, [*default_instruments(plan.force, echo), *instruments], run_dir=run_dir)
    check_preconditions(plan, executor.may_run())
    return executor.run()
