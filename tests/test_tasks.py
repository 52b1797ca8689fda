"""Tasks: HumanEval checking in a subprocess, text metrics, held-out stdlib cuts, local datasets."""

import json
import os

import pytest

from deferral.errors import DeferralError
from inference.tasks import make_task
from inference.tasks.hf_dataset import HFDataset
from inference.tasks.humaneval import HumanEval, check_reply, extract_code, program_for, truncate_body
from inference.tasks.sandbox import run_program
from inference.tasks.stdlib_continuation import StdlibContinuation, cut_examples
from training.logs.corpora import is_heldout
from inference.tasks.text_metrics import chrf, exact_first_line, lcs_length, reference_metrics, rouge_l


@pytest.fixture(scope="module")
def first_problem():
    return HumanEval(limit=1, chat=True).examples()[0].extra["problem"]


def fenced(code: str) -> str:
    return f"Here is the function:\n```python\n{code}\n```\nIt checks every pair."


def test_known_correct_solution_passes(first_problem):
    reply = fenced(first_problem["prompt"] + first_problem["canonical_solution"])
    assert check_reply(first_problem, reply, chat=True).passed


def test_raw_continuation_is_cut_at_the_end_of_the_function(first_problem):
    reply = first_problem["canonical_solution"] + "\nprint('prose after the function')\nmore prose"
    assert check_reply(first_problem, reply, chat=False).passed


def test_wrong_solution_fails(first_problem):
    reply = fenced("def has_close_elements(numbers, threshold):\n    return True")
    result = check_reply(first_problem, reply, chat=True)
    assert not result.passed and result.status == "failed" and "AssertionError" in result.detail


def test_infinite_loop_times_out_in_the_subprocess(first_problem):
    reply = fenced("def has_close_elements(numbers, threshold):\n    while True:\n        pass")
    result = check_reply(first_problem, reply, chat=True, timeout_s=1.0)
    assert result.status == "timed out" and not result.passed


def test_memory_limit_stops_a_large_allocation():
    result = run_program("x = bytearray(4 << 30)", timeout_s=10, memory_mb=256)
    assert result.status == "failed" and "MemoryError" in result.detail


def test_extract_code_takes_the_first_block_and_tolerates_an_unclosed_fence():
    assert extract_code("a\n```python\nx = 1\n```\n```python\ny = 2\n```") == "x = 1\n"
    assert extract_code("```\nx = 1\n") == "x = 1\n"
    assert extract_code("no fence at all") == "no fence at all"


def test_a_bare_body_continues_the_stub(first_problem):
    program = program_for(first_problem, fenced("    return False"), chat=True)
    assert first_problem["prompt"] + "    return False" in program
    assert truncate_body("    x = 1\n\n    return x\ndef other():\n") == "    x = 1\n\n    return x\n"


def test_humaneval_scores_pass_at_1_over_examples():
    task = HumanEval(limit=2, chat=True)
    examples = task.examples()
    good = [fenced(e.extra["problem"]["prompt"] + e.extra["problem"]["canonical_solution"]) for e in examples]
    assert task.score(examples, good) == {"pass@1": 1.0}
    assert task.score(examples, [good[0], "no code"]) == {"pass@1": 0.5}
    assert "Complete this Python function" in examples[0].prompt


def test_lcs_and_rouge_l_by_hand():
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4
    # hyp tokens: x = a + b (5), ref: x = b (3); LCS = x = b (3): P = 3/5, R = 1
    assert rouge_l("x = a + b", "x = b") == pytest.approx(2 * 0.6 * 1.0 / 1.6)
    assert rouge_l("", "") == 1.0 and rouge_l("a", "") == 0.0


def test_exact_line_chrf_and_cut_to_reference_length():
    assert exact_first_line("\n  return x  \nmore", "return x") == 1.0
    assert exact_first_line("return y", "return x") == 0.0
    assert chrf("def f(x):", "def f(x):") == pytest.approx(1.0)
    assert chrf("qqqq", "def f(x):") == 0.0  # no character n-gram in common
    metrics = reference_metrics("a = 1\nb = 2\nextra lines\nbeyond", "a = 1\nb = 2")
    assert metrics == {"exact_line": 1.0, "chrf": pytest.approx(1.0), "rouge_l": pytest.approx(1.0)}


def test_stdlib_cuts_are_seeded_and_split_prompt_from_reference():
    files = [(f"f{i}.py", "\n".join(f"line_{i}_{j} = {j}" for j in range(30))) for i in range(5)]
    a = cut_examples(files, count=3, context_lines=6, reference_lines=2, seed=7)
    assert [e.id for e in a] == [e.id for e in cut_examples(files, 3, 6, 2, seed=7)]
    assert [e.id for e in a] != [e.id for e in cut_examples(files, 3, 6, 2, seed=8)]  # the seed picks the cuts
    for e in a:
        name, text = files[int(e.id.split(":")[0][1])]
        assert (e.prompt + "\n" + e.reference) in text and e.prompt.count("\n") == 5 and e.reference.count("\n") == 1
    # More examples than files: later rounds cut the same files at new lines; earlier cuts stay put.
    more = cut_examples(files, count=3 * len(files), context_lines=6, reference_lines=2, seed=7)
    assert [e.id for e in more[:3]] == [e.id for e in a]
    assert len(more) == 3 * len(files) and len({e.id for e in more}) == len(more)


def test_stdlib_task_reads_a_source_folder(tmp_path):
    for i in range(80):  # enough files that some fall in the held-out tenth
        (tmp_path / f"mod_{i}.py").write_text("\n".join(f"value_{j} = {j} * 2" for j in range(40)))
    task = StdlibContinuation(limit=3, context_lines=8, reference_lines=2, root=tmp_path)
    examples = task.examples()
    assert len(examples) == 3 and all(is_heldout(e.id.split(":")[0]) for e in examples)
    perfect = task.score(examples, ["\n" + e.reference for e in examples])  # the model closes the last line first
    assert perfect == {"exact_line": 1.0, "chrf": pytest.approx(1.0), "rouge_l": pytest.approx(1.0)}


def test_local_dataset_task_and_its_errors(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"q": f"x{i} = ", "a": str(i)}) + "\n" for i in range(4)))
    task = HFDataset(str(path), prompt_column="q", reference_column="a", limit=3)
    examples = task.examples()
    assert [e.reference for e in examples] == ["0", "1", "2"]
    assert task.score(examples, ["0", "1", "9"])["exact_line"] == pytest.approx(2 / 3)
    with pytest.raises(DeferralError, match="no column 'prompt'"):
        HFDataset(str(path)).examples()
    with pytest.raises(DeferralError, match="does not exist"):
        HFDataset(str(tmp_path / "missing.jsonl")).examples()


def test_make_task_names_and_errors():
    assert make_task("humaneval", limit=1).chat is True
    assert make_task("stdlib").chat is False
    with pytest.raises(DeferralError, match="unknown task"):
        make_task("mbpp")
    with pytest.raises(DeferralError, match="drop --chat"):
        make_task("stdlib", chat=True)


def test_a_task_added_to_the_registry_is_built_and_named_by_every_command(monkeypatch):
    from deferral.errors import DeferralError
    from inference.tasks import TASKS, Example, Task, check_task_name, make_task

    class Echo(Task):
        name, quality_key, chat = "echo", "chrf", False

        def __init__(self, limit):
            self.limit = limit

        def examples(self):
            return [Example(id=str(i), prompt=f"p{i}", reference=f"p{i}") for i in range(self.limit)]

        def score_examples(self, examples, replies):
            return [{"chrf": float(e.reference == r)} for e, r in zip(examples, replies)]

    monkeypatch.setitem(TASKS, "echo", lambda options: Echo(options.limit or 3))
    check_task_name("echo")
    task = make_task("echo", limit=2)
    assert isinstance(task, Echo) and [e.prompt for e in task.examples()] == ["p0", "p1"]
    with pytest.raises(DeferralError, match="choose one of humaneval, stdlib, hf:<dataset or file>, echo"):
        check_task_name("nope")
