"""The library surface: compose a config, build it. ``python -m pipeline`` is a thin shell over these."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.config import CONF_DIR, register
from pipeline.executor import BuildResult, Executor
from pipeline.instruments import Instrument, default_instruments
from pipeline.pass_api import Output
from pipeline.plan import check_preconditions, prepare
from pipeline.store import Store


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
          instruments: Sequence[Instrument] = (), goals: Sequence[Output | str] = (),
          roles: Sequence[str] = ("model",), check_packages: bool = False) -> BuildResult:
    """Build every stage of ``cfg`` (or only what ``goals``, e.g. ``("package",)``, needs for ``roles``);
    raises pipeline.pass_api.UserError on bad input (nothing run).

    ``check_packages`` (for callers about to load or hand out the packages): re-hash the bytes
    of every package taken from the store, as the runtime does on load; a damaged one is
    evicted and rebuilt, never returned.

    Around each pass run the default instruments (progress lines through ``echo``, time and
    memory, the test fault hook, ``pipeline.force``), then ``instruments``.
    """
    plan = prepare(cfg, goals=goals, roles=roles)
    for note in plan.notes:  # what the plan chose for this model (a target's auto hw values)
        echo(note)

    def run() -> BuildResult:
        executor = Executor(plan, [*default_instruments(plan.force, echo), *instruments], run_dir=run_dir)
        check_preconditions(plan, executor.may_run())
        return executor.run()

    result = run()
    if check_packages and evict_damaged_packages(Store(plan.store_root, plan.memo), result, echo):
        result = run()  # once: what was evicted is rebuilt
    return result


def evict_damaged_packages(store: Store, result: BuildResult, echo: Callable[[str], None]) -> bool:
    """Check the bytes of every package this build took from the store (up to the runtime's
    VERIFY_MAX_BYTES, as the runtime checks on load); a damaged one is evicted. True if any was."""
    from runtime.package_format import VERIFY_MAX_BYTES

    evicted = False
    for key in result.package_keys.values():
        stage = next(s for s in result.stages if s.key == key)
        rec = store.records.read(key)
        if stage.status != "cached" or rec is None or rec.bytes > VERIFY_MAX_BYTES:
            continue  # a package built in this run was hashed as it was stored
        bad = store.damaged(rec)
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            echo(f"{stage.name}: damaged in the store ({bad[0]}{more}: its bytes differ from the record); "
                 "set aside, rebuilding it and what shared its files")
            store.evict(rec, bad)
            evicted = True
    return evicted
