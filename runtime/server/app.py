"""The app: /health, /v1/models, /v1/embeddings here, /v1/completions and /v1/chat/completions in completions.py.

``create_app(package, model_name)`` loads the package when the server starts (so ``/health``
answers 200 once it is loaded): a causal LM behind the engine (continuous batching over its
slots), an embedding package behind an Embedder. Bad requests get the OpenAI error shape with a
4xx status naming the ``param``, checked before anything reaches the shared engine (prompts by
their bytes before tokenization, which runs off the event loop); a request that still fails in
the engine fails alone (500, or its stream ends with an error), the others go on.
"""
from __future__ import annotations

import asyncio
import base64
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.sampling import SamplingParams
from runtime.server import completions
from runtime.server.schemas import ApiError, EmbeddingRequest


class Served:
    """The loaded package, opened by its own target's session: an engine (causal LM) or an embedder."""

    def __init__(self, package: Path, model_name: str, sampling: SamplingParams, verify: bool | None = None):
        from runtime import package_format as fmt

        self.package, self.name, self.sampling, self.created = package, model_name, sampling, int(time.time())
        manifest = fmt.read_manifest(package)
        self.kind = manifest.kind
        self.engine = self.embedder = None
        if self.kind == fmt.EMBEDDING:
            from runtime.embed import Embedder

            self.embedder = Embedder(package, verify=verify)
            self.embed_lock = threading.Lock()
            self.slots = self.embedder.batch_size
            self.embedded = self.texts = 0
        else:
            from runtime.server.engine import Engine
            from runtime.sessions import open_session
            from runtime.textgen import eos_ids
            from runtime.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(package)
            self.engine = Engine(open_session(package, verify=verify), self.tokenizer, eos_ids(self.tokenizer, package))
            self.slots = len(self.engine.slots)

    def stats(self) -> dict[str, Any]:
        """What was served (the engine's counts; embeddings: requests and texts)."""
        return self.engine.stats() if self.engine is not None else {"requests": {"embedded": self.embedded},
                                                                     "texts": self.texts}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def create_app(package: str | Path, model_name: str, sampling: SamplingParams = SamplingParams(),
               on_ready: Any = None, verify: bool | None = None) -> FastAPI:
    state: dict[str, Served] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served = await asyncio.to_thread(Served, Path(package), model_name, sampling, verify)
        state["served"] = served
        if on_ready:
            on_ready(served)
        yield
        served.close()

    def served_for(model: str, kind: str) -> Served:
        served = state["served"]
        if model != served.name:
            raise ApiError(404, f"model: {model!r} does not exist; allowed: {served.name!r}", "model", "model_not_found")
        if served.kind != kind:
            raise ApiError(400, f"model: {model!r} is a {served.kind} package; this endpoint needs a {kind} package", "model")
        return served

    app = FastAPI(title="pipeline", lifespan=lifespan)
    _add_error_handlers(app)
    _add_info_routes(app, lambda: state["served"])
    completions.add_routes(app, served_for)
    _add_embeddings_route(app, served_for)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in the OpenAI shape: ours as raised, invalid bodies as 400 naming the field, unknown routes."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            message, param = f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'invalid')})", None
        else:
            param = ".".join(where) or None
            allowed = str(first.get("msg", "invalid")).replace("Input should be ", "").replace("Value error, ", "")
            message = f"{param or 'body'}: {_shown(first.get('input'))} is not allowed; allowed: {allowed}"
        return JSONResponse(ApiError(400, message, param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").body(),
                            status_code=exc.status_code)


def _shown(value: Any, limit: int = 80) -> str:
    """A value's repr cut to ``limit`` characters: an error names what was sent without echoing megabytes."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _add_info_routes(app: FastAPI, current: Callable[[], Served]) -> None:
    """/health (the package and how busy its slots are) and /v1/models."""

    @app.get("/health")
    async def health() -> dict[str, Any]:
        served = current()
        busy = served.engine.load() if served.engine else {"running": 0, "waiting": 0}
        return {"status": "ok", "model": served.name, "kind": served.kind, "slots": served.slots, **busy}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        served = current()
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created,
                                            "owned_by": "pipeline"}]}


def _add_embeddings_route(app: FastAPI, served_for: Callable[[str, str], Served]) -> None:
    """/v1/embeddings: float lists or base64, cut to ``dimensions`` when asked."""

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> Any:
        served = served_for(body.model, "embedding")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(isinstance(t, str) and t for t in texts):
            raise ApiError(400, "input: empty strings or lists are not allowed; allowed: a non-empty string or list of them",
                           "input")
        from runtime.tokenizer import TextRefused, check_texts

        try:
            check_texts(served.embedder.tokenizer, texts, None, "input")
        except TextRefused as e:
            raise ApiError(400, str(e), "input") from None
        run = await asyncio.to_thread(_embed, served, texts)
        vectors = run.embeddings if body.dimensions is None else run.embeddings[:, :body.dimensions]
        data = [{"object": "embedding", "index": i,
                 "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64"
                               else v.tolist())} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": served.name,
                "usage": {"prompt_tokens": run.tokens, "total_tokens": run.tokens}}


def _embed(served: Served, texts: list[str]) -> Any:
    with served.embed_lock:  # one tokenizer and session: one batch at a time
        run = served.embedder.embed(texts)
        served.embedded, served.texts = served.embedded + 1, served.texts + len(texts)
        return run
