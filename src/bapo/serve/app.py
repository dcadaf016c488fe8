"""The HTTP face of ``bapo serve``: OpenAI's ``/v1/chat/completions`` (plain and streamed as server-sent events),
``/v1/completions`` (a raw prompt or token ids: what ``--generate-with`` sends) and ``/v1/models`` on FastAPI.
Every error is OpenAI's envelope with a 4xx or 5xx; no traceback reaches a client."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from bapo.runtime.export import export_info
from bapo.serve.config import ServeConfig
from bapo.serve.engine import Engine, Reply, Request
from bapo.serve.keys import Grant, Keys
from bapo.serve.pool import AdapterLoadError, AdapterPool, ModelNotFound
from bapo.serve.schemas import (ChatRequest, CompletionRequest, Usage, chunk, completion, completion_id, error,
                                text_completion)


class ApiError(Exception):
    """An error answered as OpenAI's envelope."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error(message, kind, param, code)


def _authorized(given: str, keys: Keys | None, api_key: str) -> tuple[bool, Grant | None]:
    """Whether the ``Authorization`` header ``given`` opens the server, and with per-user ``keys`` the key's grant."""
    if keys is not None:
        grant = keys.find(given[7:]) if given.startswith("Bearer ") else None
        return grant is not None, grant
    return not api_key or hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()), None


def _reply_error(e: Exception) -> ApiError:
    if isinstance(e, ModelNotFound):
        return ApiError(404, f"The model '{e}' does not exist", param="model", code="model_not_found")
    if isinstance(e, AdapterLoadError):
        return ApiError(500, str(e), kind="server_error", param="model", code="adapter_load_failed")
    return ApiError(500, "the server failed to answer this request", kind="server_error")


def create_app(cfg: ServeConfig, engine: Engine, pool: AdapterPool, base_name: str,
               keys: Keys | None = None) -> FastAPI:
    """The FastAPI application over ``engine``; ``base_name`` is the base model's id in the API. With ``keys``, each
    request's key decides which adapters it may see and use (another user's adapter is as unknown as a missing one);
    otherwise one shared key (or none) opens everything."""
    app = FastAPI(title="bapo serve", docs_url=None, redoc_url=None, openapi_url=None)
    api_key = "" if keys is not None else (cfg.api_key or os.environ.get("BAPO_API_KEY", ""))

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: HttpRequest, e: HTTPException) -> JSONResponse:
        return JSONResponse(error(str(e.detail), "invalid_request_error"), status_code=e.status_code)

    @app.middleware("http")
    async def guard(request: HttpRequest, call_next: Any) -> Any:
        ok, request.state.grant = _authorized(request.headers.get("authorization", ""), keys, api_key)
        if not ok:
            return JSONResponse(error("Incorrect API key provided", "invalid_request_error", code="invalid_api_key"),
                                status_code=401)
        try:
            return await call_next(request)
        except Exception as e:  # the last line of defence: log it here, never send it
            print(f"bapo serve: {type(e).__name__}: {e}", file=sys.stderr)
            return JSONResponse(error("internal server error", "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: HttpRequest) -> dict:
        now, grant = int(time.time()), request.state.grant
        data = [{"id": base_name, "object": "model", "created": now, "owned_by": "bapo", "parent": None}]
        data = data if grant is None or grant.base else []
        data += [{"id": n, "object": "model", "created": now, "owned_by": "bapo", "parent": base_name,
                  "bapo": export_info(pool.path(n))} for n in pool.names() if grant is None or grant.allows(n)]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest) -> Any:
        req = await _parse(request, cfg.max_body_kb * 1024, ChatRequest)
        max_tokens = req.max_completion_tokens or req.max_tokens or cfg.default_max_tokens
        if max_tokens > cfg.max_tokens:
            raise ApiError(400, f"max_tokens: {max_tokens} is over this server's limit of {cfg.max_tokens}",
                           param="max_tokens")
        adapter, served = _route(req.model, pool, base_name, cfg.fallback_to_base, request.state.grant)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Request([m.as_chat() for m in req.messages], adapter, req.adapter_scale, max_tokens,
                      req.temperature, req.top_p, req.stops, req.seed,
                      emit=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        engine.submit(job)
        cid = completion_id()
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(job, events, cid, served, usage), media_type="text/event-stream")
        try:
            reply = await _done(events)
        except asyncio.CancelledError:  # the client went away: stop generating for it
            job.cancelled.set()
            raise
        if reply.error is not None:
            raise _reply_error(reply.error)
        return completion(cid, served, reply.text, reply.finish_reason, _usage(reply))

    @app.post("/v1/completions")
    async def complete(request: HttpRequest) -> Any:
        return await _text_completions(request, cfg, engine, pool, base_name)

    return app


async def _text_completions(request: HttpRequest, cfg: ServeConfig, engine: Engine, pool: AdapterPool,
                            base_name: str) -> dict:
    """``POST /v1/completions``: each prompt (text, tokenized as the tokenizer does by default, or token ids) is one
    request to the engine, answered together as the choices of one response."""
    req = await _parse(request, cfg.max_body_kb * 1024, CompletionRequest)
    max_tokens = req.max_tokens or cfg.default_max_tokens
    if max_tokens > cfg.max_tokens:
        raise ApiError(400, f"max_tokens: {max_tokens} is over this server's limit of {cfg.max_tokens}",
                       param="max_tokens")
    prompts = [p if isinstance(p, list) else engine.tok(p)["input_ids"] for p in req.prompts]
    vocab = len(engine.tok)
    if not prompts or any(not p for p in prompts):
        raise ApiError(400, "prompt: must not be empty", param="prompt")
    if any(not 0 <= t < vocab for p in prompts for t in p):
        raise ApiError(400, f"prompt: token ids must be in 0..{vocab - 1}", param="prompt")
    adapter, served = _route(req.model, pool, base_name, cfg.fallback_to_base, request.state.grant)
    loop = asyncio.get_running_loop()
    queues = [asyncio.Queue() for _ in prompts]
    jobs = [Request([], adapter, req.adapter_scale, max_tokens, req.temperature, req.top_p, req.stops, req.seed,
                    emit=lambda ev, q=q: loop.call_soon_threadsafe(q.put_nowait, ev), prompt_ids=list(p))
            for p, q in zip(prompts, queues)]
    for job in jobs:
        engine.submit(job)
    try:
        replies = [await _done(q) for q in queues]
    except asyncio.CancelledError:
        for job in jobs:
            job.cancelled.set()
        raise
    failed = next((r.error for r in replies if r.error is not None), None)
    if failed is not None:
        raise _reply_error(failed)
    usage = Usage(prompt_tokens=sum(r.prompt_tokens for r in replies),
                  completion_tokens=sum(r.completion_tokens for r in replies),
                  total_tokens=sum(r.prompt_tokens + r.completion_tokens for r in replies))
    return text_completion(served, [(r.text, r.finish_reason) for r in replies], usage)


async def _parse(request: HttpRequest, limit: int, schema: type[ChatRequest] | type[CompletionRequest]) -> Any:
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"request body over {limit // 1024} KiB")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON: {e}", code="invalid_json") from None
    try:
        req = schema.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(x) for x in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None
    part = req.unsupported_part() if isinstance(req, ChatRequest) else None
    if part is not None:
        raise ApiError(400, f"{part}: only text parts are supported (type 'text' with a 'text' field)", param=part)
    return req


def _route(model: str, pool: AdapterPool, base_name: str, fallback: bool,
           grant: Grant | None) -> tuple[str | None, str]:
    """(adapter to use or None for the base model, the model id the response names). An adapter the request's key
    may not use is treated exactly as one that does not exist."""
    base_ok = grant is None or grant.base
    if model == base_name and base_ok:
        return None, base_name
    if model != base_name and (grant is None or grant.allows(model)) and _serves(pool, model):
        return model, model
    if fallback and base_ok:
        return None, base_name
    raise ApiError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")


def _serves(pool: AdapterPool, name: str) -> bool:
    try:
        pool.path(name)
        return True
    except ModelNotFound:
        return False


async def _done(events: asyncio.Queue) -> Reply:
    while True:
        kind, value = await events.get()
        if kind == "done":
            return value


def _usage(reply: Reply) -> Usage:
    return Usage(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                 total_tokens=reply.prompt_tokens + reply.completion_tokens)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(job: Request, events: asyncio.Queue, cid: str, model: str, usage: bool) -> AsyncIterator[str]:
    try:
        yield _sse(chunk(cid, model, {"role": "assistant", "content": ""}))
        while True:
            kind, value = await events.get()
            if kind == "delta":
                yield _sse(chunk(cid, model, {"content": value}))
                continue
            if value.error is not None:
                yield _sse(_reply_error(value.error).body)
            else:
                yield _sse(chunk(cid, model, {}, value.finish_reason))
                if usage:
                    yield _sse({**chunk(cid, model, {}), "choices": [], "usage": _usage(value).model_dump()})
            yield "data: [DONE]\n\n"
            return
    finally:  # also when the client disconnects mid-stream: the engine stops generating for it
        job.cancelled.set()
