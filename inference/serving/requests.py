"""OpenAI request bodies -> checked, typed requests. Pure: no models, no I/O.

Every problem raises RequestError naming the field (`param`) and the fix; the HTTP layer turns it
into a 400 (or another status) with OpenAI's error shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from deferral.rules import RULE_NAMES

SERVED_RULES = [r for r in RULE_NAMES if r not in ("target", "drafter")]  # rules a speculative cascade runs
MAX_STOPS = 4


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


@dataclass(frozen=True)
class CascadeChoice:
    """The deferral rule of one request (the `cascade` field); None = the server's default."""

    rule: str = "speculative"
    alpha: float | None = None
    threshold: float | None = None
    deferral_rate: float | None = None


@dataclass
class Sampling:
    """Decoding settings of one request, defaults filled from the server's flags."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str] = field(default_factory=list)


@dataclass
class ParsedRequest:
    kind: str  # "completion" or "chat"
    prompt: str | None  # completions
    messages: list[dict] | None  # chat
    sampling: Sampling
    cascade: CascadeChoice
    stream: bool
    include_usage: bool
    model: str | None
    max_tokens_given: bool  # False: the server's default applies, shortened to what the context leaves


def load_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON ({exc}): send a JSON object") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def _number(body: dict, name: str, default, low=None, high=None, integer=False, low_open=False):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}", name)
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        bounds = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
        raise RequestError(f"'{name}' must be in {bounds}, got {value}", name)
    return value


def parse_cascade(value, default: CascadeChoice) -> CascadeChoice:
    if value is None:
        return default
    if not isinstance(value, dict):
        raise RequestError("'cascade' must be an object like {\"rule\": \"token-v3\", \"alpha\": 0.5}", "cascade")
    unknown = set(value) - {"rule", "alpha", "threshold", "deferral_rate"}
    if unknown:
        raise RequestError(f"'cascade' has unknown field(s) {sorted(unknown)}: use rule, alpha, threshold, deferral_rate",
                           "cascade")
    rule = value.get("rule", default.rule)
    if rule not in SERVED_RULES:
        raise RequestError(f"unknown rule {json.dumps(rule)}: choose one of {', '.join(SERVED_RULES)}", "cascade.rule")
    knobs = {}
    for name in ("alpha", "threshold", "deferral_rate"):
        knob = value.get(name)
        if knob is not None and (isinstance(knob, bool) or not isinstance(knob, (int, float))):
            raise RequestError(f"'cascade.{name}' must be a number, got {json.dumps(knob)}", f"cascade.{name}")
        knobs[name] = None if knob is None else float(knob)
    if knobs["deferral_rate"] is not None and not 0 <= knobs["deferral_rate"] <= 1:
        raise RequestError(f"'cascade.deferral_rate' must be in [0, 1], got {knobs['deferral_rate']}",
                           "cascade.deferral_rate")
    if rule != "learned" and (knobs["threshold"] is not None or knobs["deferral_rate"] is not None):
        raise RequestError("'cascade.threshold' and 'cascade.deferral_rate' only apply to rule learned", "cascade.rule")
    if knobs["threshold"] is not None and knobs["deferral_rate"] is not None:
        raise RequestError("give either 'cascade.threshold' or 'cascade.deferral_rate', not both", "cascade.threshold")
    return CascadeChoice(rule, knobs["alpha"], knobs["threshold"], knobs["deferral_rate"])


def parse_stop(value) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise RequestError(f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    return stops


def parse_messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects", "messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}] needs a role of system, user or assistant", f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # the content-parts form: text parts only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise RequestError(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be text", f"messages[{i}].content")
        out.append({"role": m["role"], "content": content})
    return out


def parse_request(body: dict, kind: str, defaults: Sampling, default_cascade: CascadeChoice) -> ParsedRequest:
    """Check an OpenAI completions (kind "completion") or chat completions ("chat") body."""
    if _number(body, "n", 1, integer=True) != 1:
        raise RequestError("only 'n': 1 is supported: send one request per completion", "n")
    unsupported = {"logprobs": body.get("logprobs") not in (None, False), "echo": bool(body.get("echo")),
                   "best_of": body.get("best_of") not in (None, 1), "suffix": body.get("suffix") is not None,
                   "tools": bool(body.get("tools")), "functions": bool(body.get("functions"))}
    for name, present in unsupported.items():
        if present:
            raise RequestError(f"'{name}' is not supported by this server: leave it out", name)
    prompt = messages = None
    if kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("'prompt' must be a non-empty string (one prompt per request)", "prompt")
    else:
        messages = parse_messages(body.get("messages"))
    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    sampling = Sampling(
        max_tokens=_number(body, limit_name, defaults.max_tokens, low=1, integer=True),
        temperature=float(_number(body, "temperature", defaults.temperature, low=0, high=2)),
        top_p=float(_number(body, "top_p", defaults.top_p, low=0, high=1, low_open=True)),
        seed=_number(body, "seed", defaults.seed, integer=True),
        stop=parse_stop(body.get("stop")),
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", "stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", "model")
    return ParsedRequest(
        kind=kind, prompt=prompt, messages=messages, sampling=sampling,
        cascade=parse_cascade(body.get("cascade"), default_cascade), stream=stream,
        include_usage=bool(options.get("include_usage", True)), model=model,
        max_tokens_given=body.get(limit_name) is not None,
    )
