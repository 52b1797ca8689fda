"""`deferral distill` end to end on the tiny pair (CPU, tiny budget), plus its pure parts."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from deferral.cli import main as cli_main

CODE = textwrap.dedent('''
    def add(a, b):
        """Return the sum of a and b, which may be any numbers that support addition in Python."""
        return a + b


    class Stack:
        """A last-in first-out container with push and pop operations, written for the tests here."""

        def __init__(self):
            self.items = []

        def push(self, item):
            self.items.append(item)

        def pop(self):
            return self.items.pop()
''')
PROSE = ("The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence. "
         "Every morning the animals gather near the barn and wait for the sun to rise over the hills. ") * 4


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    for pkg in ("alpha", "beta", "gamma", "delta", "held"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "core.py").write_text(CODE.replace("add", f"add_{pkg}"))
        (root / pkg / "README.md").write_text(PROSE.replace("fox", f"{pkg} fox"))
    return root


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def argmax_agreement(drafter, target, run, name: str = "code", blocks: int = 2) -> tuple[float, int]:
    """Share of the positions of a run's first held-out `name` blocks where both models' argmaxes agree,
    worked out here, and the number of positions."""
    ids = torch.load(run / "data" / "corpus.pt", weights_only=True)[f"heldout_{name}"][:blocks].long()
    vocab = target.config.vocab_size
    with torch.no_grad():
        q = drafter(ids).logits[..., :vocab].argmax(-1)
        p = target(ids).logits[..., :vocab].argmax(-1)
    return float((q == p).float().mean()), ids.numel()


def _argv(tiny_dir, corpus_dir, run, export, steps=6, extra=()):
    return ["distill", "--target", str(tiny_dir / "target"), "--data", json.dumps([str(corpus_dir)]),
            "--out", str(run), "--export", str(export), "--block-size", "48", "--steps", str(steps),
            "--batch-size", "4", "--layers", "1", "--hidden", "32", "--intermediate", "64", "--heads", "4",
            "--kv-heads", "2", "--raw-prompts", "6", "--new-tokens", "8", "--generate-batch-size", "4",
            "--heldout-units", '["held"]', "--heldout-fraction", "0", "--val-every", "3", "--val-blocks", "2",
            "--eval-blocks", "2", "--checkpoint-every", "2", "--warmup-steps", "2", "--lr", "0.01",
            "--tracking-uri", "none", "--seed", "3", *extra]


def test_distill_trains_exports_and_resumes(tiny_dir, corpus_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, export = tmp_path / "run", tmp_path / "drafter"
    assert cli_main(_argv(tiny_dir, corpus_dir, run, export)) == 0
    final = _last_json(capsys.readouterr().out)
    assert final["steps"] == 6

    # A standard Hugging Face folder that the Auto classes open, with the target's tokenizer.
    model = AutoModelForCausalLM.from_pretrained(export)
    # The export is the final student (float32 in last.ckpt) in bfloat16, and the reported held-out
    # agreement is that of the exported weights, as a user loads them.
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    student = AutoModelForCausalLM.from_config(model.config).float()
    student.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    target = AutoModelForCausalLM.from_pretrained(tiny_dir / "target")
    loaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    for name in ("code", "prose"):
        agree, tokens = argmax_agreement(loaded, target, run, name)
        assert final[f"agree_{name}"] == pytest.approx(agree) and final[f"tokens_{name}"] == tokens, name
    assert json.loads((run / "summary.json").read_text())["agreement_weights"] == "bfloat16"
    exported = model.state_dict()
    for key, value in student.state_dict().items():
        assert torch.equal(exported[key], value.to(torch.bfloat16)), key
    tok, target_tok = AutoTokenizer.from_pretrained(export), AutoTokenizer.from_pretrained(tiny_dir / "target")
    assert tok.get_vocab() == target_tok.get_vocab()
    assert model.config.num_hidden_layers == 1 and model.config.tie_word_embeddings
    assert "deferral distill" in (export / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["corpus"]["heldout_code"]["units"] == 1  # exactly the package named held out
    assert summary["data"]["corpus"]["train_code"]["units"] == 4
    assert summary["data"]["onpolicy"]["train_sequences"] == 6

    # Resume: a longer budget continues from the `last` checkpoint rather than starting over.
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert first["global_step"] == 6
    assert cli_main(_argv(tiny_dir, corpus_dir, run, export, steps=9)) == 0
    assert _last_json(capsys.readouterr().out)["steps"] == 9
    second = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert second["global_step"] == 9

    # A run made without MLflow is logged into a store afterwards, per-step metrics of both fits included.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli_main(["distill", "--log-run", str(run), "--tracking-uri", uri, "--experiment", "t"]) == 0
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = _last_json(capsys.readouterr().out)["mlflow_run_id"]
    assert client.get_run(run_id).data.metrics["steps"] == 9
    assert {m.step for m in client.get_metric_history(run_id, "train_kl")} >= {2, 8}


def test_distill_is_seeded(tiny_dir, corpus_dir, tmp_path, capsys):
    weights = []
    for name in ("a", "b"):
        assert cli_main(_argv(tiny_dir, corpus_dir, tmp_path / name, tmp_path / f"x{name}", steps=3)) == 0
        from safetensors.torch import load_file

        weights.append(load_file(tmp_path / f"x{name}" / "model.safetensors"))
    capsys.readouterr()
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_measure_only_reports_agreement_and_cost(tiny_dir, corpus_dir, tmp_path, capsys):
    def measure(drafter: str, out):
        argv = ["distill", "--measure-only", "--drafter", str(tiny_dir / drafter), "--target", str(tiny_dir / "target"),
                "--data", json.dumps([str(corpus_dir)]), "--out", str(out), "--block-size", "48",
                "--heldout-units", '["held", "beta"]', "--heldout-fraction", "0", "--eval-blocks", "2"]
        assert cli_main(argv) == 0
        return _last_json(capsys.readouterr().out)

    from deferral.pair import load_pair

    out = measure("drafter", tmp_path / "m")
    pair = load_pair(str(tiny_dir / "drafter"), str(tiny_dir / "target"))
    agree, tokens = argmax_agreement(pair.drafter.model, pair.target.model, tmp_path / "m")
    assert out["tokens_code"] == tokens == 2 * 48
    assert out["agree_code"] == pytest.approx(agree)
    assert out["cost_ratio"] > 0
    # the target measured as its own drafter agrees everywhere
    same = measure("target", tmp_path / "same")
    assert same["agree_code"] == same["agree_prose"] == 1.0


def test_clear_errors(tiny_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["distill", "--target", str(tiny_dir / "target"), "--out", str(tmp_path / "r"), "--tracking-uri", "none"]
    assert cli_main(base + ["--data", json.dumps([str(empty)])]) == 2
    assert "gave no training text" in capsys.readouterr().err
    assert cli_main(base + ["--data", json.dumps([str(tmp_path / "missing")])]) == 2
    assert "no corpus folder exists" in capsys.readouterr().err
    assert cli_main(base + ["--hidden", "30", "--heads", "4"]) == 2
    assert "multiple of --heads" in capsys.readouterr().err
    assert cli_main(["distill", "--measure-only", "--out", str(tmp_path / "r")]) == 2
    assert "needs --drafter" in capsys.readouterr().err
    assert cli_main(["distill", "--log-run", str(tmp_path / "r")]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_distill_loss_is_zero_for_identical_logits_and_topk_matches_full_on_peaked():
    from training.distill.distill_module import distill_loss

    torch.manual_seed(0)
    logits = torch.randn(10, 50)
    kl, agree = distill_loss(logits, logits.clone(), None)
    assert kl.abs() < 1e-6 and agree == 10
    peaked = logits.clone()
    peaked[:, :3] += 40.0  # all mass on three tokens: top-3 KL equals the full KL
    student = torch.randn(10, 50)
    full, _ = distill_loss(student, peaked, None)
    top3, _ = distill_loss(student, peaked, 3)
    assert torch.allclose(full, top3, atol=1e-4)


def test_pack_blocks_and_split():
    from training.distill.distill_data import Document, pack_blocks, split_documents

    blocks = pack_blocks([[1, 2, 3], [4, 5]], block=3, separator=0)
    assert blocks.tolist() == [[1, 2, 3], [0, 4, 5]]  # the trailing separator does not fill a row
    docs = [Document("code", u, "x") for u in ("a", "b", "c")] + [Document("code", "d", "x", heldout=True)]
    train, held = split_documents(docs, 0.0, ["b"])
    assert [d.unit for d in train] == ["a", "c"] and [d.unit for d in held] == ["b", "d"]


def test_resumable_shuffle_continues_the_same_stream():
    from itertools import islice

    from training.distill.distill_module import ResumableShuffle

    full = list(islice(iter(ResumableShuffle(10, seed=5)), 35))  # three and a half passes
    assert sorted(full[:10]) == list(range(10)) and full[:10] != full[10:20]  # a new order per pass
    for start in (0, 7, 10, 23):
        assert list(islice(iter(ResumableShuffle(10, seed=5, start=start)), 35 - start)) == full[start:]


def test_the_measured_drafter_is_the_exported_one():
    """Agreement after training is measured on the weights rounded to bf16 as exported (in float32
    arithmetic), not on the float32 student; the student itself is left as it was."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.distill.distill_export import as_exported

    torch.manual_seed(0)
    student = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    measured = as_exported(student)
    for key, value in measured.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, before[key].to(torch.bfloat16).float()), key
        assert torch.equal(student.state_dict()[key], before[key]), key
    assert any(not torch.equal(measured.state_dict()[k], before[k]) for k in before)  # rounding changed something
