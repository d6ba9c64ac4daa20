"""1,000 generated override sets over every config key of every preset, with hostile values: each is
taken, or refused in one line (what ``python -m pipeline`` prints before exiting 2); none raises
anything else, and none writes to the store."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from omegaconf import OmegaConf

from conftest import ROOT, run_pipeline, store_snapshot

PRESET_GROUPS = ("model", "hw", "pipeline", "spd", "shape")
HOSTILE = [10 ** 30, -10 ** 30, 2 ** 63, -1, 0, 1e308, float("inf"), float("nan"), -0.5, True, False, None, "", " ",
           "/", "/etc", "../../..", "~", "\u202eevil", "\U0001F4A5", "ñandú", "x" * 5000, "a,b", "null", "[1,2]",
           [], [1, 2], ["a", None], {"a": 1}, {"model_type": "llama"}, "${oc.env:HOME}", "${nonexistent.key}",
           "${model}", "${oc.env:NO_SUCH_VAR_FOR_TEST}", "${min:1,2}", "${max:[]}", "1e5", "0x10", "--", "-m"]


def _keys() -> list[str]:
    """Every leaf key of the composed config under each preset of each group (hydra.* aside)."""
    from pipeline.api import compose

    keys: set[str] = set()
    variants = [[]] + [[f"{g}={p.stem}"] for g in PRESET_GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]
    for overrides in variants:
        if overrides and overrides[0].startswith("pipeline=causal_lm_draft"):
            overrides = [*overrides, "draft_model=tiny_llama"]
        try:
            cfg = compose(overrides)
        except Exception:  # noqa: BLE001 - a preset that needs a partner (spd=draft) is covered by others
            continue
        container = OmegaConf.to_container(cfg, resolve=False)

        def walk(node, prefix: str) -> None:
            if isinstance(node, dict) and node:
                for k, v in node.items():
                    walk(v, f"{prefix}.{k}" if prefix else str(k))
            else:
                keys.add(prefix)
        walk(container, "")
    return sorted(k for k in keys if k and not k.startswith(("hydra", "pipeline.stages", "store.root")))


KEYS = _keys()
PRESETS = [f"{g}={p.stem}" for g in PRESET_GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]


def _render(value) -> str:
    from pipeline.auto import override_value

    if isinstance(value, str) and value.startswith("${"):
        return value  # an interpolation, as typed
    return override_value(value)


overrides_strategy = st.lists(
    st.one_of(st.tuples(st.sampled_from(KEYS), st.sampled_from(HOSTILE)).map(lambda kv: f"{kv[0]}={_render(kv[1])}"),
              st.sampled_from(PRESETS)),
    min_size=1, max_size=3)


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "store"


def check_one(overrides: list[str], store) -> str | None:
    """What the CLI does before building: precheck, then plan (check hooks). A refusal as one line, None if taken."""
    from pipeline.api import compose
    from pipeline.pass_api import UserError
    from pipeline.plan import check_preconditions, prepare
    from pipeline.precheck import one_line

    argv = [*overrides, f"store.root={store}"]
    try:  # the composition python -m pipeline's precheck runs (pipeline.precheck), once
        cfg = compose(argv)
    except Exception as exc:  # noqa: BLE001 - precheck turns every composition error into one line
        return one_line(exc)
    try:
        plan = prepare(cfg, resolve=False)
        check_preconditions(plan, [])
    except UserError as e:
        return str(e)
    return None


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 1000)), deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=not os.environ.get("FUZZ_RANDOM"))  # fixed examples unless FUZZ_RANDOM is set
@given(overrides=overrides_strategy)
def test_generated_overrides_are_taken_or_refused_in_one_line(overrides, fuzz_store):
    problem = check_one(overrides, fuzz_store)  # anything but UserError propagates: the test fails
    if problem is not None:
        assert problem.strip() and "\n" not in problem and "Traceback" not in problem, (overrides, problem)
    assert not [p for p in store_snapshot(fuzz_store) if p.startswith(("trees", "cas", "records"))]


@pytest.mark.parametrize("overrides", [["model.hf_config.vocab_size=1e400"], ["compile.ctx_len=${oc.env:HOME}"],
                                       ["hw.num_cores=[1,2]"], ["model.seed=abc"]])
def test_the_cli_exits_2_in_one_line_for_refused_overrides(overrides, empty_store):
    r = run_pipeline(empty_store, *overrides)
    assert r.rc == 2 and len(r.err.strip().splitlines()) == 1 and r.err.startswith("error: "), (overrides, r.err)
    assert "Traceback" not in r.err and not [p for p in store_snapshot(empty_store) if p.startswith(("trees", "cas"))]
