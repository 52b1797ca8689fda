"""HTTP routes (FastAPI): OpenAI's /v1/completions, /v1/chat/completions and /v1/models, plus /health.

Bodies are read and checked by requests.py (so a bad field gets a 400 that names it, in OpenAI's
error shape), decoded by the Engine, and answered as one JSON object or as server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from deferral.errors import DeferralError
from inference.batch import context_room
from inference.runner import encode_messages, encode_prompts
from inference.serving.engine import Engine, Job
from inference.serving.requests import CascadeChoice, RequestError, Sampling, load_body, parse_request


@dataclass
class ServerSettings:
    model_name: str  # what /v1/models lists and responses carry
    defaults: Sampling  # the server's flags, for fields a request leaves out
    cascade: CascadeChoice  # the server's default rule
    chat_prompts: bool = False  # wrap /v1/completions prompts in the chat template (--chat)


def error_response(message: str, status: int = 400, param: str | None = None) -> JSONResponse:
    kind = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


def encode(pair, parsed) -> list[int]:
    try:
        if parsed.kind == "chat":
            return encode_messages(pair, parsed.messages)
        return encode_prompts(pair, [parsed.prompt], chat=False)[0]
    except DeferralError as exc:
        raise RequestError(str(exc), "messages" if parsed.kind == "chat" else "prompt") from None


def fit_to_context(parsed, prompt_ids: list[int], max_context: int, param: str) -> None:
    """Refuse a prompt or an explicit max_tokens the context cannot hold; shorten the server's default."""
    room = context_room(len(prompt_ids), max_context)
    if room < 1:
        raise RequestError(f"the prompt has {len(prompt_ids)} tokens; the context window is {max_context} tokens, "
                           f"so a prompt may have at most {max_context - 2}: shorten it", param)
    max_tokens = parsed.sampling.max_tokens
    if not parsed.max_tokens_given:
        parsed.sampling.max_tokens = min(max_tokens, room)
    elif max_tokens > room:
        raise RequestError(f"max_tokens {max_tokens} does not fit: the context window ({max_context} tokens) leaves "
                           f"{room} after this {len(prompt_ids)}-token prompt: ask for at most {room}", "max_tokens")


def build_app(engine: Engine, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="deferral serve", docs_url=None, redoc_url=None)
    app.state.model_name = settings.model_name
    pair = engine.pair

    @app.exception_handler(RequestError)
    async def _request_error(_, exc: RequestError):
        return error_response(exc.message, exc.status, exc.param)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "in_flight": engine.in_flight}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "deferral"}]}

    async def handle(request: Request, kind: str):
        parsed = parse_request(load_body(await request.body()), kind, settings.defaults, settings.cascade)
        if kind == "completion" and settings.chat_prompts:
            parsed.kind, parsed.messages = "chat", [{"role": "user", "content": parsed.prompt}]
        prompt_ids = encode(pair, parsed)
        fit_to_context(parsed, prompt_ids, pair.max_context, "messages" if kind == "chat" else "prompt")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(prompt_ids, parsed.sampling, parsed.cascade,
                  emit=lambda delta, done: loop.call_soon_threadsafe(events.put_nowait, (delta, done)))
        try:
            engine.submit(job)
        except DeferralError as exc:  # the rule could not be built (e.g. a learned rule's rate is unreachable)
            raise RequestError(str(exc), "cascade") from None
        ident = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if parsed.stream:
            return StreamingResponse(sse(job, events, kind, ident, created, settings.model_name, parsed.include_usage),
                                     media_type="text/event-stream")
        try:
            while True:
                _, done = await events.get()
                if done is not None:
                    break
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        if "error" in done:
            return error_response(done["error"], 500)
        return full_response(kind, ident, created, settings.model_name, done)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, "chat")

    return app


def full_response(kind: str, ident: str, created: int, model: str, done: dict) -> dict:
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": done["text"]},
                  "finish_reason": done["finish_reason"], "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": done["text"], "finish_reason": done["finish_reason"], "logprobs": None}
        obj = "text_completion"
    return {"id": ident, "object": obj, "created": created, "model": model, "choices": [choice], "usage": done["usage"]}


def _chunk(kind: str, ident: str, created: int, model: str, delta: str | None, finish: str | None,
           first: bool = False) -> dict:
    if kind == "chat":
        body = {} if delta is None else {"content": delta}
        if first:
            body["role"] = "assistant"
        choice = {"index": 0, "delta": body, "finish_reason": finish, "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": ident, "object": obj, "created": created, "model": model, "choices": [choice]}


async def sse(job: Job, events: asyncio.Queue, kind: str, ident: str, created: int, model: str, include_usage: bool):
    """Server-sent events: one chunk per published delta (after each verified block), a last chunk
    with the finish reason (and `usage`, with the cascade's counters), then [DONE]."""
    def line(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    first = True
    try:
        while True:
            delta, done = await events.get()
            if delta:
                yield line(_chunk(kind, ident, created, model, delta, None, first))
                first = False
            if done is None:
                continue
            if "error" in done:
                yield line({"error": {"message": done["error"], "type": "server_error", "param": None, "code": None}})
            else:
                last = _chunk(kind, ident, created, model, None if kind == "chat" else "", done["finish_reason"], first)
                if include_usage:
                    last["usage"] = done["usage"]
                yield line(last)
            yield "data: [DONE]\n\n"
            return
    finally:
        job.cancelled = True  # harmless once finished; stops decoding for a client that went away
