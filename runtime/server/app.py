"""The routes: /v1/completions, /v1/chat/completions (both streaming), /v1/embeddings, /v1/models, /health.

``create_app(package, model_name)`` loads the package when the server starts (so ``/health``
answers 200 once it is loaded): a causal LM behind the engine (continuous batching over its
slots), an embedding package behind an Embedder. Bad requests get the OpenAI error shape with a
4xx status; a failure inside the engine fails only the requests it was running (500).
"""
from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.sampling import SamplingParams
from runtime.server.schemas import ApiError, ChatRequest, CompletionRequest, EmbeddingRequest

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class Served:
    """The loaded package: an engine (causal LM) or an embedder."""

    def __init__(self, package: Path, model_name: str, sampling: SamplingParams, device: str,
                 verify: bool | None = None):
        from runtime import package_format as fmt

        self.package, self.name, self.sampling, self.created = package, model_name, sampling, int(time.time())
        manifest = fmt.read_manifest(package)
        self.kind = manifest.kind
        device = "ai100" if manifest.program.backend == fmt.QAIC else device
        self.engine = self.embedder = None
        if self.kind == fmt.EMBEDDING:
            from runtime.embed import Embedder

            self.embedder = Embedder(package, device=device, verify=verify)
            self.embed_lock = threading.Lock()
            self.slots = self.embedder.batch_size
        else:
            from runtime.server.engine import Engine
            from runtime.sessions import open_session
            from runtime.textgen import eos_ids
            from runtime.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(package)
            self.engine = Engine(open_session(package, device, verify), self.tokenizer, eos_ids(self.tokenizer, package))
            self.slots = len(self.engine.slots)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def create_app(package: str | Path, model_name: str, sampling: SamplingParams = SamplingParams(),
               device: str = "cpu", on_ready: Any = None, verify: bool | None = None) -> FastAPI:
    state: dict[str, Served] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served = await asyncio.to_thread(Served, Path(package), model_name, sampling, device, verify)
        state["served"] = served
        if on_ready:
            on_ready(served)
        yield
        served.close()

    app = FastAPI(title="pipeline", lifespan=lifespan)

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
            allowed = str(first.get("msg", "invalid")).replace("Input should be ", "")
            message = f"{param or 'body'}: {first.get('input')!r} is not allowed; allowed: {allowed}"
        return JSONResponse(ApiError(400, message, param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").body(),
                            status_code=exc.status_code)

    def served_for(model: str, kind: str) -> Served:
        served = state["served"]
        if model != served.name:
            raise ApiError(404, f"model: {model!r} does not exist; allowed: {served.name!r}", "model", "model_not_found")
        if served.kind != kind:
            raise ApiError(400, f"model: {model!r} is a {served.kind} package; this endpoint needs a {kind} package", "model")
        return served

    @app.get("/health")
    async def health() -> dict[str, Any]:
        served = state["served"]
        busy = served.engine.load() if served.engine else {"running": 0, "waiting": 0}
        return {"status": "ok", "model": served.name, "kind": served.kind, "slots": served.slots, **busy}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        served = state["served"]
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created,
                                            "owned_by": "pipeline"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        served = served_for(body.model, "causal_lm")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ApiError(400, "prompt: [] is not allowed; allowed: a string or a non-empty list of strings", "prompt")
        ids = [list(served.tokenizer(p)["input_ids"]) for p in prompts]
        max_tokens = body.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS
        return await _respond(served, body, ids, max_tokens, "prompt", chat=False,
                              echo=prompts if body.echo else None)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        served = served_for(body.model, "causal_lm")
        tokenizer = served.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ApiError(400, f"model: {served.name!r} has no chat template; allowed: /v1/completions", "model")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - the template refuses this conversation
            raise ApiError(400, f"messages: the chat template refused them ({e})", "messages") from None
        ids = [list(tokenizer(text, add_special_tokens=False)["input_ids"])]
        max_tokens = body.max_completion_tokens or body.max_tokens or served.engine.ctx_len
        return await _respond(served, body, ids, max_tokens, "messages", chat=True)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> Any:
        served = served_for(body.model, "embedding")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(isinstance(t, str) and t for t in texts):
            raise ApiError(400, "input: empty strings or lists are not allowed; allowed: a non-empty string or list of them",
                           "input")
        run = await asyncio.to_thread(_embed, served, texts)
        vectors = run.embeddings if body.dimensions is None else run.embeddings[:, :body.dimensions]
        data = [{"object": "embedding", "index": i,
                 "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64"
                               else v.tolist())} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": served.name,
                "usage": {"prompt_tokens": run.tokens, "total_tokens": run.tokens}}

    return app


def _embed(served: Served, texts: list[str]) -> Any:
    with served.embed_lock:  # one tokenizer and session: one batch at a time
        return served.embedder.embed(texts)


def _sampling(served: Served, body: Any) -> SamplingParams:
    base = served.sampling
    return SamplingParams(temperature=base.temperature if body.temperature is None else body.temperature,
                          top_k=base.top_k if body.top_k is None else body.top_k,
                          top_p=base.top_p if body.top_p is None else body.top_p,
                          repetition_penalty=base.repetition_penalty,
                          seed=base.seed if body.seed is None else body.seed)


async def _respond(served: Served, body: Any, ids: list[list[int]], max_tokens: int, param: str, chat: bool,
                   echo: list[str] | None = None) -> Any:
    from runtime.server.engine import Job

    limit = served.engine.ctx_len - 1
    for p in ids:
        if len(p) > limit:
            raise ApiError(400, f"{param}: {len(p)} tokens is not allowed; allowed: at most {limit} tokens (the package's "
                           f"ctx_len {served.engine.ctx_len} - 1)", param, "context_length_exceeded")
        if not p:
            raise ApiError(400, f"{param}: empty after tokenization is not allowed; allowed: at least one token", param)
    if body.logprobs:
        raise ApiError(400, f"logprobs: {body.logprobs!r} is not allowed; allowed: null or false", "logprobs")
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    sampling, stop = _sampling(served, body), body.stops()

    def emitter(index: int) -> Any:
        return lambda kind, data: loop.call_soon_threadsafe(events.put_nowait, (index, kind, data))

    jobs = [Job(p, max_tokens, emitter(i), sampling, stop) for i, p in enumerate(ids)]
    for job in jobs:
        served.engine.submit(job)
    meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": served.name}
    if body.stream:
        return StreamingResponse(_stream(served, jobs, events, meta, chat, echo), media_type="text/event-stream")
    try:
        done: dict[int, dict[str, Any]] = {}
        while len(done) < len(jobs):
            index, kind, data = await events.get()
            if kind == "error":
                raise ApiError(500, f"generation failed: {data}", kind="server_error")
            if kind == "done":
                done[index] = data
    finally:
        for job in jobs:
            served.engine.cancel(job)  # a client gone (or an error): free the slots (no-op for finished jobs)
    usage = _usage(done.values())
    if chat:
        d = done[0]
        return {**meta, "object": "chat.completion", "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": d["text"]},
                             "finish_reason": d["finish_reason"], "logprobs": None}]}
    return {**meta, "object": "text_completion", "usage": usage,
            "choices": [{"index": i, "text": (echo[i] if echo else "") + done[i]["text"],
                         "finish_reason": done[i]["finish_reason"], "logprobs": None} for i in range(len(jobs))]}


def _usage(done: Any) -> dict[str, int]:
    done = list(done)
    prompt, completion = sum(d["prompt_tokens"] for d in done), sum(d["completion_tokens"] for d in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _stream(served: Served, jobs: list, events: asyncio.Queue, meta: dict[str, Any], chat: bool,
                  echo: list[str] | None) -> AsyncIterator[str]:
    """Server-sent events: a chunk per piece of text, a last chunk per choice with its finish_reason, [DONE]."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(index: int, text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta = ({"role": "assistant", "content": ""} if first else {"content": text} if text is not None else {})
            choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps({**meta, 'object': obj, 'choices': [choice]}, ensure_ascii=False)}\n\n"

    try:
        for i in range(len(jobs)):
            if chat:
                yield chunk(i, None, None, first=True)
            elif echo:
                yield chunk(i, echo[i], None)
        finished = 0
        while finished < len(jobs):
            index, kind, data = await events.get()
            if kind == "text":
                yield chunk(index, data, None)
            elif kind == "done":
                finished += 1
                yield chunk(index, None if chat else "", data["finish_reason"])
            else:
                error = ApiError(500, f"generation failed: {data}", kind="server_error").body()
                yield f"data: {json.dumps(error)}\n\n"
                return
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            served.engine.cancel(job)
