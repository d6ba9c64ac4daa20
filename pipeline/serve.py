"""``python -m pipeline.serve [build overrides] [serve.host=127.0.0.1 serve.port=8000]``: build or reuse a
package, then serve it over HTTP with the OpenAI API shapes (runtime/server).

``serve.package=<folder>`` serves a package as it is (no build). A causal LM is served with
continuous batching over ``compile.full_batch_size`` slots (4 here unless set), concurrent
requests sharing them; an embedding package (``pipeline=embedding``) answers /v1/embeddings.
The model's name in requests is ``model.name`` (the package's own for ``serve.package``).
``sampling.*`` are the defaults a request's temperature/top_p/seed override (greedy unless
set). Build progress and the listening line go to stderr. Exit codes as ``python -m
pipeline``: 0 (stopped by Ctrl-C or SIGTERM), 1 a stage failed or the server could not start,
2 bad input.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import hydra
import uvicorn
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from pipeline.cli import finish_job, job_dir
from pipeline.config import register
from pipeline.pass_api import UserError

CONFIG = "serve"
register(CONFIG)


class StoppableServer(uvicorn.Server):
    """uvicorn's server, except that the signal which stopped it is not raised again once it has
    stopped (uvicorn does, so the process would die by it, with a traceback for SIGINT): a stop
    asked for by SIGTERM or Ctrl-C ends the job normally, its summary written, exit 0."""

    stopped_by: str | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(sig: int, frame: Any) -> None:
            self.stopped_by = self.stopped_by or signal.Signals(sig).name
            self.handle_exit(sig, frame)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def package_to_serve(cfg: Any, run_dir: Path) -> tuple[Path, str, dict[str, Any], bool | None]:
    """(package, model name, summary, the runtime's ``verify`` on load): ``serve.package`` as it
    is (checked on load), or the config's build (checked by the build)."""
    from runtime import package_format as fmt

    if cfg.serve.package is not None:
        package = Path(cfg.serve.package).expanduser()
        try:
            manifest = fmt.read_manifest(package)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"serve.package: {str(package)!r} is not allowed ({e}); allowed: a package folder "
                            "(with manifest.json)") from None
        return package, str(manifest.model.get("name") or package.name), {"package": str(package)}, None
    from pipeline.api import build

    if HydraConfig.get().runtime.choices.get("pipeline") == "embedding" and not any(
            o.startswith("compile.full_batch_size") for o in HydraConfig.get().overrides.task):
        with open_dict(cfg):
            cfg.compile.full_batch_size = None  # an encoder has no KV slots
    result = build(cfg, echo=_say, run_dir=run_dir, goals=("package",), check_packages=True)
    summary = result.summary()
    if not result.ok or result.package is None:
        raise RuntimeError(summary)
    return result.package, cfg.model.name, summary, False  # the build checked the bytes: no second check on load


@hydra.main(config_path="../conf", config_name=CONFIG, version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    run_dir = job_dir(cfg)
    try:
        from pipeline.infer import sampling_params

        sampling = sampling_params(cfg)
        port = cfg.serve.port
        if not (isinstance(port, int) and 0 < port < 65536):
            raise UserError(f"serve.port: {port!r} is not allowed; allowed: an integer in 1..65535")
        package, name, summary, verify = package_to_serve(cfg, run_dir)
        from pipeline.infer import check_runnable

        check_runnable(package)  # its target can run it (e.g. compiled, not a dry run's plan)
    except UserError as exc:
        return finish_job(run_dir, 2, {"error": str(exc)}, str(exc))
    except RuntimeError as exc:
        return finish_job(run_dir, 1, exc.args[0], None)
    from runtime.server.app import create_app

    host = cfg.serve.host
    loaded: list[Any] = []

    def ready(served: Any) -> None:
        loaded.append(served)
        _say(f"serving {name!r} ({served.kind}, {served.slots} slots) from {package} on http://{host}:{port}/v1")

    app = create_app(package, name, sampling, on_ready=ready, verify=verify)
    # requests still running at SIGTERM/Ctrl-C get 5 s, then the server stops anyway
    server = StoppableServer(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5))
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind the port
        message = f"serve.port: the server could not start on {host}:{port} (exit {exc.code})"
        return finish_job(run_dir, 1, {**summary, "error": message}, message)
    if not server.started:
        message = f"serve: the server did not start on {host}:{port} (see the lines above)"
        return finish_job(run_dir, 1, {**summary, "error": message}, message)
    served = loaded[0].stats() if loaded else {}
    if served:
        requests = served["requests"]
        _say(f"stopped{' by ' + server.stopped_by if server.stopped_by else ''}: served {sum(requests.values())} "
             f"requests ({', '.join(f'{n} {k}' for k, n in requests.items())}), {served['completion_tokens']} tokens "
             f"generated; summary: {run_dir / 'summary.json'}")
    return finish_job(run_dir, 0, {**summary, "served": served, "stopped_by": server.stopped_by}, None)


if __name__ == "__main__":
    from pipeline.cli import launch

    launch(main, CONFIG)
