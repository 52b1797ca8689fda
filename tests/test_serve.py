"""`deferral serve` through the real `openai` client and raw HTTP, on a server bound to a free port."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from deferral.rules import make_rule  # noqa: E402
from inference.config import DecodeConfig  # noqa: E402
from inference.runner import encode_prompts, run  # noqa: E402
from inference.serve_cli import build_parser, make_server  # noqa: E402

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
MAX_NEW = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(pair, *flags: str, hold=None):
    """A server on a free port for `pair` with `deferral serve` flags; yields its base URL. With
    `hold` (a threading.Event) the engine starts decoding only once it is set."""
    app, engine = make_server(build_parser().parse_args(list(flags)), pair)
    if hold is None:
        engine.start()
    else:
        threading.Thread(target=lambda: (hold.wait(), engine.start()), daemon=True).start()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.stop()


@pytest.fixture(scope="module")
def pair(tiny_dir):
    from deferral.pair import load_pair

    pair = load_pair(str(tiny_dir / "drafter"), str(tiny_dir / "target"))
    pair.tokenizer.chat_template = CHAT_TEMPLATE  # this module's own copy of the tokenizer
    return pair


@pytest.fixture(scope="module")
def url(pair):
    with serving(pair, "--max-new-tokens", str(MAX_NEW), "--batch-size", "8") as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def reference(pair, ids: list[int], rule: str = "speculative", alpha=None, max_new: int = MAX_NEW, **sampling) -> str:
    """What `deferral generate` decodes for one prompt (batch 1, seed 0 unless given, greedy unless a
    temperature is given)."""
    cfg = DecodeConfig(max_new_tokens=max_new, **sampling)
    gen = run(pair, make_rule(rule, alpha), [ids], cfg)[0]
    return pair.tokenizer.decode(gen.tokens, skip_special_tokens=True)


def post(url: str, path: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


PROMPTS = ["hello world", "def f(x):", "The quick brown fox", "abc abc abc", "0123", "print('hi')"]


def test_completion_equals_generate_for_lossless_and_lossy_rules(pair, client):
    ids = encode_prompts(pair, ["hello world"])[0]
    out = client.completions.create(model="m", prompt="hello world", max_tokens=MAX_NEW)
    assert out.choices[0].text == reference(pair, ids)
    assert out.choices[0].finish_reason in ("length", "stop")
    usage = out.usage.model_dump()
    assert usage["completion_tokens"] <= MAX_NEW and usage["prompt_tokens"] == len(ids)
    assert usage["target_calls"] >= 1 and usage["drafted"] >= usage["accepted"]
    lossy = client.completions.create(model="m", prompt="hello world", max_tokens=MAX_NEW,
                                      extra_body={"cascade": {"rule": "token-v3", "alpha": 0.9}})
    assert lossy.choices[0].text == reference(pair, ids, "token-v3", 0.9)
    assert lossy.usage.model_dump()["deferred"] < usage["deferred"]  # the lenient rule keeps drafts


def test_server_wide_engine_and_drafting_flags_reach_the_decoder(pair, client):
    """--engine static and an adaptive-drafting floor: the same lossless text, fewer drafts per call."""
    ids = encode_prompts(pair, ["def f(x):"])[0]
    plain = client.completions.create(model="m", prompt="def f(x):", max_tokens=MAX_NEW).usage.model_dump()
    with serving(pair, "--max-new-tokens", str(MAX_NEW), "--engine", "static", "--draft-confidence", "0.999") as url:
        api = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        out = api.completions.create(model="m", prompt="def f(x):", max_tokens=MAX_NEW)
    assert out.choices[0].text == reference(pair, ids)
    usage = out.usage.model_dump()
    assert usage["drafted"] / usage["target_calls"] < plain["drafted"] / plain["target_calls"]
    # --bonus target: a lossy request's token after a fully kept block comes from the target
    lenient = {"cascade": {"rule": "token-v3", "alpha": 0.9}}
    with serving(pair, "--max-new-tokens", str(MAX_NEW), "--bonus", "target") as url:
        api = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        out = api.completions.create(model="m", prompt="def f(x):", max_tokens=MAX_NEW, extra_body=lenient)
    assert out.choices[0].text == reference(pair, ids, "token-v3", 0.9, bonus="target")


def test_streaming_sends_blocks_then_usage(pair, client):
    chunks = list(client.completions.create(model="m", prompt="def f(x):", max_tokens=MAX_NEW, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == reference(pair, encode_prompts(pair, ["def f(x):"])[0])
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # more than one block
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert chunks[-1].usage.model_dump()["target_calls"] >= 1


def test_chat_goes_through_the_template(pair, client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    ids = pair.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    out = client.chat.completions.create(model="m", messages=messages, max_tokens=MAX_NEW)
    assert out.choices[0].message.content == reference(pair, list(ids))
    stream = client.chat.completions.create(model="m", messages=messages, max_tokens=MAX_NEW, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == out.choices[0].message.content


def test_concurrent_requests_each_get_their_own_text(pair, client):
    jobs = [(p, rule) for p in PROMPTS for rule in ("speculative", "token-v3")]

    def ask(job):
        prompt, rule = job
        extra = {"cascade": {"rule": rule, "alpha": 0.5}} if rule != "speculative" else {}
        return client.completions.create(model="m", prompt=prompt, max_tokens=MAX_NEW, extra_body=extra).choices[0].text

    with ThreadPoolExecutor(len(jobs)) as pool:
        texts = list(pool.map(ask, jobs))
    for (prompt, rule), text in zip(jobs, texts):
        ids = encode_prompts(pair, [prompt])[0]
        assert text == reference(pair, ids, rule, 0.5 if rule != "speculative" else None), (prompt, rule)


def test_stop_string_ends_the_text_before_it(pair, client):
    full = reference(pair, encode_prompts(pair, ["abc abc abc"])[0])
    stop = full[3:5]
    assert stop and full.find(stop) >= 0
    out = client.completions.create(model="m", prompt="abc abc abc", max_tokens=MAX_NEW, stop=[stop])
    assert out.choices[0].text == full[: full.find(stop)]
    assert out.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt="abc abc abc", max_tokens=MAX_NEW, stop=stop, stream=True) if c.choices)
    assert streamed == out.choices[0].text


def test_sampling_with_a_seed_is_the_seeded_generate_decode(pair, client):
    """A seeded sampled request decodes what `deferral generate` samples with that seed and those
    settings: the temperature and top-p are applied (not greedy) and the seed picks the draw."""
    ids = encode_prompts(pair, ["0123"])[0]
    ask = lambda seed: client.completions.create(  # noqa: E731
        model="m", prompt="0123", max_tokens=MAX_NEW, temperature=1.0, top_p=0.9, seed=seed).choices[0].text
    texts = {seed: ask(seed) for seed in (7, 8, 9)}
    for seed, text in texts.items():
        assert text == reference(pair, ids, temperature=1.0, top_p=0.9, seed=seed), seed
    assert len(set(texts.values())) > 1  # the seed matters
    assert reference(pair, ids) not in texts.values()  # sampled, not the greedy text


@pytest.mark.parametrize("body, param, words", [
    (b"{not json", None, "not valid JSON"),
    ({"prompt": "x", "cascade": {"rule": "nope"}}, "cascade.rule", "unknown rule"),
    ({"prompt": "x", "cascade": {"rule": "learned"}}, "cascade.rule", "--router"),
    ({"prompt": "x", "cascade": {"rule": "learned", "deferral_rate": 5}}, "cascade.deferral_rate", "[0, 1]"),
    ({"prompt": "x", "cascade": {"rule": "token-v3", "threshold": 0.3}}, "cascade.rule", "only apply to rule learned"),
    ({"prompt": "x", "max_tokens": 10**9}, "max_tokens", "at most"),
    ({"prompt": "x" * 5000}, "prompt", "context window"),
    ({"prompt": "x", "temperature": -1}, "temperature", "[0, 2]"),
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"prompt": "x", "n": 2}, "n", "'n': 1"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "role"),
])
def test_bad_requests_get_400_naming_the_field(url, body, param, words):
    path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
    status, reply = post(url, path, body)
    assert status == 400
    assert reply["error"]["param"] == param and words in reply["error"]["message"]
    status, health = post(url, "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert status == 200  # still serving


@pytest.mark.parametrize("flags, words", [
    (["--router", "/no/such/router"], "does not exist"),
    (["--threshold", "0.3"], "--rule learned"),
    (["--rule", "target"], "cannot be served"),
    (["--max-queue", "0"], "at least 1"),
    (["--engine", "graphs"], "needs a CUDA device"),
    (["--engine", "fast"], "unknown --engine"),
])
def test_server_flags_that_cannot_work_stop_it_before_it_listens(tiny_dir, flags, words, capsys):
    from deferral.cli import main as deferral

    rc = deferral(["serve", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and words in err[0]


def test_models_and_health(url):
    with urllib.request.urlopen(url + "/v1/models") as resp:
        models = json.loads(resp.read())
    assert models["data"][0]["id"] == "target"
    with urllib.request.urlopen(url + "/health") as resp:
        assert json.loads(resp.read())["status"] == "ok"


def test_requests_beyond_the_queue_get_429(pair):
    hold = threading.Event()
    with serving(pair, "--max-queue", "1", hold=hold) as base:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, base, "/v1/completions", {"prompt": "hello", "max_tokens": 4})
            while json.loads(urllib.request.urlopen(base + "/health").read())["in_flight"] < 1:
                time.sleep(0.01)
            status, reply = post(base, "/v1/completions", {"prompt": "x", "max_tokens": 2})
            assert status == 429 and "limit of 1" in reply["error"]["message"]
            hold.set()  # the engine starts: the first request completes, and the queue frees up
            assert first.result(timeout=60)[0] == 200
        assert post(base, "/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200


@pytest.mark.slow
def test_default_pair_lossless_over_http_equals_generate(capsys):
    from deferral.cli import main as deferral
    from deferral.pair import load_pair

    prompt = "def moving_average(values, window):\n"
    assert deferral(["generate", "--prompt", prompt, "--max-new-tokens", "24", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["text"]
    default = load_pair()
    with serving(default, "--max-new-tokens", "24") as base:
        status, reply = post(base, "/v1/completions", {"prompt": prompt})
    assert status == 200 and reply["choices"][0]["text"] == expected
