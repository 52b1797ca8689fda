"""`deferral serve`: an OpenAI-compatible HTTP server decoding with speculative cascades.

Same pair, rule, router and decoding flags as `deferral generate`; a request may choose its own
rule in the extra `cascade` field. See docs/serve.md.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.errors import DeferralError
from deferral.rules import make_rule, warn_alpha_outside_range
from deferral.cli_args import add_config_flags, add_pair_arguments, flag, parse
from inference.generate import RuleOptions, add_decode_arguments
from inference.serving.requests import SERVED_RULES, CascadeChoice, RequestError, Sampling


# A server batches requests that arrive together (generate's default of 1 would decode them one by one).
SERVE_DEFAULTS = {"batch_size": 16}


@dataclass
class ServeOptions:
    host: str = flag("127.0.0.1", "address to listen on")
    port: int = flag(8000, "port to listen on (0 = any free port)")
    max_queue: int = flag(64, "requests in flight (decoding or waiting) beyond which new ones get HTTP 429")
    model_name: str | None = flag(None, "the model id /v1/models lists (default: the target's name)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="deferral serve", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_pair_arguments(parser)
    add_config_flags(parser, RuleOptions)  # the default rule of requests that name none
    add_decode_arguments(parser)
    parser.set_defaults(**SERVE_DEFAULTS)
    add_config_flags(parser, ServeOptions)
    return parser


# Decoding settings of the server as a whole (a request sets its sampling and length, not these).
SERVER_DECODE_FIELDS = ("draft_confidence", "draft_schedule", "draft_stop", "draft_stop_risk", "engine", "bonus")


def server_decode_settings(args) -> dict:
    return {name: getattr(args, name) for name in SERVER_DECODE_FIELDS}


class RuleCache:
    """Rules by request choice, built once (a learned rule loads and checks its router once)."""

    def __init__(self, pair, router: str | None):
        self.pair, self.router = pair, router
        self._rules: dict[CascadeChoice, object] = {}
        self._lock = threading.Lock()

    def __call__(self, choice: CascadeChoice):
        with self._lock:
            if choice not in self._rules:
                self._rules[choice] = self._build(choice)
            return self._rules[choice]

    def _build(self, choice: CascadeChoice):
        if choice.rule == "learned":
            if not self.router:
                raise RequestError("rule learned needs a router: start the server with --router DIR", "cascade.rule")
            from inference.learned import load_learned_rule

            try:
                return load_learned_rule(self.router, self.pair, threshold=choice.threshold,
                                         deferral_rate=choice.deferral_rate, alpha=choice.alpha)
            except DeferralError as exc:
                raise RequestError(str(exc), "cascade") from None
        try:
            return make_rule(choice.rule, choice.alpha)
        except DeferralError as exc:
            raise RequestError(str(exc), "cascade.alpha") from None


def served_name(source: str) -> str:
    """The model id for /v1/models: the target's file or folder name, or its hub id."""
    path = Path(str(source))
    return path.name.removesuffix(".gguf") if path.exists() else str(source)


def check_flags(args) -> None:
    """Refuse flags that cannot work, before any model is loaded."""
    from inference.config import DecodeConfig

    if args.rule not in SERVED_RULES:
        raise DeferralError(f"--rule {args.rule} cannot be served: choose one of {', '.join(SERVED_RULES)}")
    if args.rule != "learned" and (args.threshold is not None or args.deferral_rate is not None):
        raise DeferralError("--threshold and --deferral-rate set the default of --rule learned: add --rule learned or drop them")
    if args.batch_size < 1 or args.max_queue < 1:
        raise DeferralError("--batch-size and --max-queue must be at least 1")
    DecodeConfig(draft_tokens=args.draft_tokens, temperature=args.temperature, top_p=args.top_p,
                 max_new_tokens=args.max_new_tokens, **server_decode_settings(args))  # the same checks as generate


def make_server(args, pair):
    """(FastAPI app, Engine) for parsed flags and a loaded pair; the engine is not started."""
    from inference.serving.app import ServerSettings, build_app
    from inference.engines import resolve_engine
    from inference.serving.engine import Engine

    check_flags(args)
    default = CascadeChoice(args.rule, args.alpha, args.threshold, args.deferral_rate)
    rules = RuleCache(pair, args.router)
    try:
        rules(default)  # a bad default (unknown router, unreachable rate) stops the server before it listens
        if args.router:
            rules(CascadeChoice("learned"))  # so does a router that cannot be loaded for this pair
    except RequestError as exc:
        raise DeferralError(exc.message) from None
    warn_alpha_outside_range(args.rule, args.alpha)
    for model in (pair.drafter.model, pair.target.model):  # an engine this machine or model lacks stops it here
        resolve_engine(args.engine, model)
    defaults = Sampling(max_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        seed=args.seed)
    name = args.model_name or served_name(pair.target.identity.get("source", "deferral"))
    engine = Engine(pair, rules, draft_tokens=args.draft_tokens, max_batch=args.batch_size, max_queue=args.max_queue,
                    drafting=server_decode_settings(args))
    settings = ServerSettings(model_name=str(name), defaults=defaults, cascade=default, chat_prompts=args.chat)
    return build_app(engine, settings), engine


def main(argv: list[str]) -> int:
    import uvicorn

    from deferral.pair import load_pair

    args = parse(build_parser(), argv)
    check_flags(args)
    pair = load_pair(args.drafter, args.target, device=args.device, dtype=args.dtype)
    app, engine = make_server(args, pair)
    engine.start()
    print(f"serving {app.state.model_name} on http://{args.host}:{args.port} "
          f"(default rule {args.rule}; POST /v1/completions, /v1/chat/completions)", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.stop()
    return 0
