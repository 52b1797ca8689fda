"""`deferral generate` through the real console entry point: JSON output and one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from deferral.cli import main
from tests.single_thread import one_thread  # noqa: F401  (autouse)


@pytest.fixture
def tiny_args(tiny_dir):
    return ["--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target")]


def generate(capsys, *argv):
    code = main(["generate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def reference(pair, rule: str, alpha, texts: list[str], batch_size: int = 1, sequential: bool = False, **cfg):
    """The generations `run` decodes for these prompts and settings, outside the CLI."""
    from deferral.rules import make_rule
    from inference.config import DecodeConfig
    from inference.runner import encode_prompts, run

    return run(pair, make_rule(rule, alpha), encode_prompts(pair, texts), DecodeConfig(**cfg), batch_size=batch_size,
               sequential=sequential)


def test_json_fields(capsys, tiny_args, tiny_pair, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def f(x):"}\n\n{"prompt": "hello"}\n')
    code, out, _ = generate(capsys, *tiny_args, "--rule", "token-v3", "--alpha", "0.5", "--prompts", str(prompts),
                            "--batch-size", "2", "--max-new-tokens", "6", "--draft-tokens", "2", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert len(rows) == 2
    for row in rows:
        for key, kind in [("text", str), ("new_tokens", int), ("target_calls", int), ("drafter_calls", int),
                          ("drafted", int), ("accepted", int), ("deferred", int), ("wall_s", float)]:
            assert isinstance(row[key], kind), key
        assert row["new_tokens"] == len(row["tokens"]) > 0
        assert 0 <= row["accepted"] <= row["drafted"] and row["target_calls"] >= 1
    # the flags reach the decode: the rows are run's generations for that rule, alpha, K and batch
    expected = reference(tiny_pair, "token-v3", 0.5, ["def f(x):", "hello"], batch_size=2, max_new_tokens=6,
                         draft_tokens=2)
    for row, gen in zip(rows, expected):
        assert row["tokens"] == gen.tokens
        assert (row["drafted"], row["accepted"], row["deferred"]) == (gen.stats.drafted, gen.stats.accepted,
                                                                      gen.stats.deferred)
        assert row["text"] == tiny_pair.tokenizer.decode(gen.tokens, skip_special_tokens=True)


def test_plain_text_output_and_sampling(capsys, tiny_args, tiny_pair):
    flags = ["--prompt", "abc", "--temperature", "0.8", "--top-p", "0.9", "--max-new-tokens", "5", "--sequential",
             "--rule", "chow"]
    code, out, err = generate(capsys, *tiny_args, *flags, "--seed", "3")
    assert code == 0
    # stdout is the text alone: the seeded sample of the sequential cascade with these settings
    [gen] = reference(tiny_pair, "chow", None, ["abc"], sequential=True, temperature=0.8, top_p=0.9,
                      max_new_tokens=5, seed=3)
    assert out == tiny_pair.tokenizer.decode(gen.tokens, skip_special_tokens=True) + "\n"
    assert re.search(rf"\[chow\] {len(gen.tokens)} new tokens, 1 prompt", err), err
    # sampled, not greedy: another seed draws another text
    others = {generate(capsys, *tiny_args, *flags, "--seed", str(seed))[1] for seed in (4, 5, 6)}
    assert others - {out}


def test_speculative_equals_target_through_the_cli(capsys, tiny_dir):
    args = ["--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target_padded"),
            "--prompt", "x = [1, 2,", "--max-new-tokens", "12", "--json"]
    outputs = {}
    for name, flags in [("target", ["--rule", "target"]), ("speculative", ["--rule", "speculative"]),
                        ("adaptive", ["--rule", "speculative", "--draft-confidence", "0.3", "--draft-tokens", "6"])]:
        code, out, _ = generate(capsys, *args, *flags)
        assert code == 0
        outputs[name] = json.loads(out)["tokens"]
    assert outputs["speculative"] == outputs["adaptive"] == outputs["target"]


def test_different_tokenizers_are_refused(capsys, tiny_dir):
    code, _, err = generate(capsys, "--drafter", str(tiny_dir / "other_tokenizer"), "--target",
                            str(tiny_dir / "target"), "--prompt", "hi")
    assert_one_error_line(code, err, "different tokenizers", "other_tokenizer", "target")


def test_missing_model_path(capsys, tiny_dir, tmp_path):
    code, _, err = generate(capsys, "--drafter", str(tmp_path / "nope"), "--target", str(tiny_dir / "target"),
                            "--prompt", "hi")
    assert_one_error_line(code, err, "nope", "check the path")


def test_gguf_without_the_gguf_package(tiny_dir, tmp_path):
    """A subprocess in which `import gguf` fails, as on a machine without the package."""
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + bytes(64))
    code = (
        "import sys; sys.modules['gguf'] = None\n"
        "from deferral.cli import main\n"
        f"sys.exit(main(['generate', '--drafter', {str(fake)!r}, '--target', {str(tiny_dir / 'target')!r},"
        " '--prompt', 'hi']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert_one_error_line(proc.returncode, proc.stderr, "model.gguf", "gguf", "pip install")


@pytest.mark.parametrize("flags,fragments", [
    (["--rule", "fastest"], ["unknown rule 'fastest'", "speculative"]),
    (["--draft-tokens", "0"], ["--draft-tokens", "at least 1"]),
    (["--temperature", "-0.5"], ["--temperature", ">= 0"]),
    (["--top-p", "0"], ["--top-p"]),
    (["--draft-confidence", "1.5"], ["--draft-confidence", "[0, 1]"]),
    (["--rule", "learned"], ["--router"]),
    (["--threshold", "0.3"], ["--threshold", "learned"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--no-such-flag", "1"], ["--help"]),
])
def test_bad_flags(capsys, tiny_args, flags, fragments):
    code, _, err = generate(capsys, *tiny_args, "--prompt", "hi", *flags)
    assert_one_error_line(code, err, *fragments)


def test_empty_prompt(capsys, tiny_args):
    code, _, err = generate(capsys, *tiny_args, "--prompt", "")
    assert_one_error_line(code, err, "empty")


def test_prompt_longer_than_the_context(capsys, tiny_args):
    code, _, err = generate(capsys, *tiny_args, "--prompt", "a" * 300)  # tiny models: 256 positions
    assert_one_error_line(code, err, "300 tokens", "256", "shorten")


def test_prompt_and_prompts_file_are_exclusive(capsys, tiny_args, tmp_path):
    code, _, err = generate(capsys, *tiny_args)
    assert_one_error_line(code, err, "--prompt", "--prompts")
    code, _, err = generate(capsys, *tiny_args, "--prompts", str(tmp_path / "missing.jsonl"))
    assert_one_error_line(code, err, "missing.jsonl", "does not exist")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt field"}\n')
    code, _, err = generate(capsys, *tiny_args, "--prompts", str(bad))
    assert_one_error_line(code, err, "bad.jsonl:1", "prompt")
