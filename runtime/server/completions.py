"""The generation routes: /v1/completions and /v1/chat/completions, answered whole or streamed as server-sent events.

The prompts go to the engine as jobs (one per prompt), whose events come back to the request's
event loop; a client gone (or an error) cancels its jobs, which frees their slots.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from runtime.sampling import SamplingParams
from runtime.server.schemas import ApiError, ChatRequest, CompletionRequest

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def add_routes(app: FastAPI, served_for: Callable[[str, str], Any]) -> None:
    """``served_for(model, kind)``: the loaded package (app.Served) if it is the one asked for, else an ApiError."""

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        served = served_for(body.model, "causal_lm")
        if body.logprobs is not None and body.stream:
            raise ApiError(400, "logprobs: not allowed with stream=true; allowed: logprobs with stream=false", "logprobs")
        ids, prompts = await asyncio.to_thread(_prompt_ids, served, body.prompt)  # tokenizing: off the event loop
        max_tokens = body.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS
        return await _respond(served, body, ids, max_tokens, "prompt", chat=False,
                              echo=prompts if body.echo else None, logprobs=body.logprobs)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        served = served_for(body.model, "causal_lm")
        if not getattr(served.tokenizer, "chat_template", None):
            raise ApiError(400, f"model: {served.name!r} has no chat template; allowed: /v1/completions", "model")
        ids = await asyncio.to_thread(_chat_ids, served, body)
        max_tokens = body.max_completion_tokens or body.max_tokens or served.engine.ctx_len
        return await _respond(served, body, ids, max_tokens, "messages", chat=True)


def _checked(served: Any, texts: list[str], param: str) -> None:
    """Texts that cannot fit (told by their bytes) or are not valid Unicode: 400 before any tokenization."""
    from runtime.tokenizer import TextRefused, check_texts

    try:
        check_texts(served.tokenizer, texts, served.engine.ctx_len - 1, param)
    except TextRefused as e:
        code = None if "Unicode" in e.problem else "context_length_exceeded"
        raise ApiError(400, str(e), param, code) from None


def _chat_ids(served: Any, body: ChatRequest) -> list[list[int]]:
    """The conversation through the chat template, tokenized."""
    tokenizer = served.tokenizer
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    _checked(served, ["".join(m["content"] for m in messages)], "messages")
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - the template refuses this conversation
        raise ApiError(400, f"messages: the chat template refused them ({e})", "messages") from None
    return [list(tokenizer(text, add_special_tokens=False)["input_ids"])]


def _prompt_ids(served: Any, prompt: Any) -> tuple[list[list[int]], list[str]]:
    """(token ids, text) of each prompt: a string, strings, token ids or lists of token ids."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise ApiError(400, "prompt: [] is not allowed; allowed: a string, a list of strings or of token id lists",
                       "prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    if isinstance(prompt[0], str):
        _checked(served, prompt, "prompt")
        return [list(served.tokenizer(p)["input_ids"]) for p in prompt], list(prompt)
    vocab = served.engine.session.program.signature.dims["vocab_size"]
    for p in prompt:
        _fits(served, p, "prompt")  # before decoding it for echo
        bad = next((t for t in p if not 0 <= t < vocab), None)
        if bad is not None:
            raise ApiError(400, f"prompt: token id {bad} is not allowed; allowed: 0..{vocab - 1}", "prompt")
    return [list(p) for p in prompt], [served.tokenizer.decode(p) for p in prompt]


def _fits(served: Any, ids: list[int], param: str) -> None:
    limit = served.engine.ctx_len - 1
    if len(ids) > limit:
        raise ApiError(400, f"{param}: {len(ids)} tokens is not allowed; allowed: at most {limit} tokens (the package's "
                       f"ctx_len {served.engine.ctx_len} - 1)", param, "context_length_exceeded")
    if not ids:
        raise ApiError(400, f"{param}: empty after tokenization is not allowed; allowed: at least one token", param)


def _logprobs(tokenizer: Any, prompt_ids: list[int], done: dict[str, Any], echo: bool) -> dict[str, Any]:
    """OpenAI's completions ``logprobs``: tokens, token_logprobs, top_logprobs, text_offset; the prompt's
    first (with echo), whose first token has none."""
    ids = (list(prompt_ids) if echo else []) + list(done["ids"])
    scores = done["scores"]  # the prompt's from its second token (with echo), then the new tokens'
    pieces = [tokenizer.decode([t]) for t in ids]
    lead = [None] * (len(ids) - len(scores))  # the first prompt token: nothing before it to predict it
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    return {"tokens": pieces, "token_logprobs": lead + [lp for lp, _ in scores],
            "top_logprobs": lead + [{tokenizer.decode([t]): v for t, v in top.items()} for _, top in scores],
            "text_offset": offsets}


def _sampling(served: Any, body: Any) -> SamplingParams:
    """The request's sampling over the server's; checked here, so a bad value is this request's 400 and never
    reaches the shared engine."""
    from runtime.sampling import SamplingError

    base = served.sampling
    params = SamplingParams(temperature=base.temperature if body.temperature is None else body.temperature,
                            top_k=base.top_k if body.top_k is None else body.top_k,
                            top_p=base.top_p if body.top_p is None else body.top_p,
                            repetition_penalty=base.repetition_penalty,
                            seed=base.seed if body.seed is None else body.seed)
    try:
        params.check()
    except SamplingError as e:
        raise ApiError(400, f"{e.key}: {e.problem}", e.key) from None
    return params


async def _respond(served: Any, body: Any, ids: list[list[int]], max_tokens: int, param: str, chat: bool,
                   echo: list[str] | None = None, logprobs: int | None = None) -> Any:
    from runtime.server.engine import Job

    for p in ids:
        _fits(served, p, param)
    if chat and body.logprobs:
        raise ApiError(400, f"logprobs: {body.logprobs!r} is not allowed; allowed: null or false (log-probabilities: "
                       "/v1/completions)", "logprobs")
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    sampling, stop = _sampling(served, body), body.stops()

    def emitter(index: int) -> Any:
        return lambda kind, data: loop.call_soon_threadsafe(events.put_nowait, (index, kind, data))

    jobs = [Job(p, max_tokens, emitter(i), sampling, stop, logprobs=logprobs, score_prompt=bool(echo) and logprobs is not None)
            for i, p in enumerate(ids)]
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
                         "finish_reason": done[i]["finish_reason"],
                         "logprobs": None if logprobs is None else _logprobs(served.tokenizer, ids[i], done[i], bool(echo))}
                        for i in range(len(jobs))]}


def _usage(done: Any) -> dict[str, int]:
    done = list(done)
    prompt, completion = sum(d["prompt_tokens"] for d in done), sum(d["completion_tokens"] for d in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _stream(served: Any, jobs: list, events: asyncio.Queue, meta: dict[str, Any], chat: bool,
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
