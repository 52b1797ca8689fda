"""`deferral evaluate` with the learned rule: a router trained and exported on the tiny pair, swept
by deferral rate next to a hand-set rule."""

import json

import pytest

from deferral.cli import main as deferral
from tests.router_helpers import export_tiny_router


@pytest.fixture(scope="module")
def router(tiny_dir, tmp_path_factory):
    return export_tiny_router(tiny_dir, tmp_path_factory.mktemp("learned-eval"), docs=30, words=40, epochs=1)[0]


def test_learned_rule_is_swept_by_deferral_rate(router, tiny_dir, tmp_path):
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps({"prompt": p, "reference": "x"}) + "\n" for p in ["def f(x):", "y = ("]))
    out = tmp_path / "eval"
    rc = deferral([
        "evaluate", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
        "--task", f"hf:{rows_file}", "--rules", "[learned, chow]", "--alphas", "{chow: [0.5]}",
        "--router", str(router), "--deferral-rates", "[0.0, 1.0]", "--modes", "[speculative]",
        "--max-new-tokens", "8", "--out", str(out), "--no-mlflow", "--timing-repeats", "0",
    ])
    assert rc == 0
    rows = {json.loads(line)["key"]: json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()}
    never, always = rows["learned|speculative|deferral_rate=0|K=5"], rows["learned|speculative|deferral_rate=1|K=5"]
    assert "chow|speculative|alpha=0.5|K=5" in rows
    # Deferring everywhere is lossless speculative decoding: greedy tokens equal the target's.
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    tokens = {(g["key"], g["index"]): g["tokens"] for g in gens}
    for i in range(2):
        assert tokens[(always["key"], i)] == tokens[("target|baseline|-|K=0", i)]
    assert always["deferred"] == always["examined"] > 0
    # The swept knob moves the rule: at rate 0 it keeps drafts that lossless decoding rejects.
    assert never["deferral_rate"] < always["deferral_rate"] == 1.0 and never["accepted"] > always["accepted"]
    assert "## learned (speculative)" in (out / "tables.md").read_text()
