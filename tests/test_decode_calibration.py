"""`deferral calibrate`: thresholds measured while decoding, so a requested deferral rate decodes at
that rate (within 0.05 on prompts the calibration never saw)."""

import json
import random
import shutil

import pytest

from deferral.calibration import decoded_rate_table, threshold_for_decoded_rate
from deferral.cli import main as deferral
from deferral.errors import DeferralError
from inference.decode_calibration import next_thresholds
from inference.learned import resolve_threshold
from tests.router_helpers import WORDS, export_tiny_router

RATES = [0.2, 0.35]


def test_table_is_monotone_and_interpolates_between_measurements():
    measured = [  # (threshold, decoded rate): the 0.6 point is a noisy bump upwards
        {"threshold": 0.2, "deferral_rate": 0.5, "examined": 100},
        {"threshold": 0.4, "deferral_rate": 0.3, "examined": 100},
        {"threshold": 0.6, "deferral_rate": 0.32, "examined": 100},
        {"threshold": 0.8, "deferral_rate": 0.1, "examined": 100},
    ]
    table = decoded_rate_table(list(reversed(measured)))
    assert [r["threshold"] for r in table["rows"]] == [0.2, 0.4, 0.6, 0.8]
    assert [r["monotone_rate"] for r in table["rows"]] == [0.5, 0.3, 0.3, 0.1]
    assert threshold_for_decoded_rate(table, 0.4) == pytest.approx(0.3)
    assert threshold_for_decoded_rate(table, 0.2) == pytest.approx(0.7)
    # On the plateau (0.4 and 0.6 both decode at 0.3) the higher threshold defers least for that rate.
    assert threshold_for_decoded_rate(table, 0.3) == pytest.approx(0.6)
    with pytest.raises(DeferralError, match="outside"):
        threshold_for_decoded_rate(table, 1.5)


def test_next_thresholds_bracket_rates_outside_the_measured_range():
    measured = [{"threshold": 0.4, "deferral_rate": 0.3, "examined": 10},
                {"threshold": 0.5, "deferral_rate": 0.2, "examined": 10}]
    below, inside, above = next_thresholds(measured, [0.05, 0.25, 0.6])
    assert below > 0.5  # less deferral than ever measured: a higher threshold
    assert inside == pytest.approx(0.45)
    assert above < 0.4


def test_decode_table_is_preferred_where_it_covers_the_rate(capsys):
    log_table = {"alpha": 0.0, "rows": [{"deferral_rate": 0.0, "threshold": 1.0}, {"deferral_rate": 1.0, "threshold": 0.0}]}
    decoded = decoded_rate_table([{"threshold": 0.3, "deferral_rate": 0.4, "examined": 50},
                                  {"threshold": 0.5, "deferral_rate": 0.2, "examined": 50}], alpha=0.0)
    meta = {"calibration": log_table, "decode_calibration": decoded}
    assert resolve_threshold(meta, None, 0.3, 0.0) == pytest.approx(0.4)
    assert resolve_threshold({"calibration": log_table}, None, 0.3, 0.0) == pytest.approx(0.7)
    # Outside the decoded range: the log table, with a warning that decoding may not keep the rate.
    assert resolve_threshold(meta, None, 0.9, 0.0) == pytest.approx(0.1)
    assert "outside the rates measured while decoding" in capsys.readouterr().err


def prompt_file(path, count, seed):
    rng = random.Random(seed)
    rows = [{"prompt": " ".join(rng.choice(WORDS) for _ in range(12))} for _ in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def router(tiny_dir, tmp_path_factory):
    return export_tiny_router(tiny_dir, tmp_path_factory.mktemp("calibrate"), docs=30, words=40, epochs=1)[0]


def pair_flags(tiny_dir):
    return ["--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target")]


def decoded_rate(tiny_dir, router, prompts, knob, tokens=32):
    """Deferred / examined positions when `deferral generate` decodes `prompts` at `knob`
    (["--deferral-rate", R] or ["--threshold", T])."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = deferral(["generate", *pair_flags(tiny_dir), "--rule", "learned", "--router", str(router),
                       *knob, "--prompts", str(prompts), "--max-new-tokens", str(tokens),
                       "--batch-size", "16", "--json"])
    assert rc == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    return sum(r["deferred"] for r in rows) / sum(r["examined"] for r in rows)


def calibrate(tiny_dir, router, out, prompts, *extra):
    return deferral(["calibrate", *pair_flags(tiny_dir), "--router", str(router), "--out", str(out),
                     "--task", f"hf:{prompts}", "--limit", "128", "--max-new-tokens", "32", "--batch-size", "16",
                     "--rates", json.dumps(RATES), *extra])


def test_requested_rates_decode_within_005_on_unseen_prompts(router, tiny_dir, tmp_path, capsys):
    seen, unseen = prompt_file(tmp_path / "seen.jsonl", 128, 1), prompt_file(tmp_path / "unseen.jsonl", 128, 2)
    out = tmp_path / "calibrated"
    assert calibrate(tiny_dir, router, out, seen) == 0
    meta = json.loads((out / "router.json").read_text())
    table = meta["decode_calibration"]
    assert table["prompts"] == 128 and table["requested_rates"] == RATES
    assert not (out / "decode_calibration.partial.jsonl").exists()
    assert "decode_calibration" not in json.loads((router / "router.json").read_text())  # --out: a copy
    # Greedy decoding is deterministic: decoding the calibration prompts at a measured threshold
    # reproduces the measured rate exactly.
    for point in table["rows"][:2]:
        assert decoded_rate(tiny_dir, out, seen, ["--threshold", repr(point["threshold"])]) == point["deferral_rate"]
    for rate in RATES:
        assert abs(decoded_rate(tiny_dir, out, unseen, ["--deferral-rate", str(rate)]) - rate) <= 0.05


def test_an_interrupted_calibration_resumes_from_its_measurements(router, tiny_dir, tmp_path, capsys):
    prompts = prompt_file(tmp_path / "p.jsonl", 128, 3)
    full = tmp_path / "full"
    assert calibrate(tiny_dir, router, full, prompts, "--max-rounds", "1") == 0
    table = json.loads((full / "router.json").read_text())["decode_calibration"]
    # An interrupted run: the copy holds its settings line and all but the last measurement.
    resumed = tmp_path / "resumed"
    shutil.copytree(router, resumed)
    settings = {k: table[k] for k in ("task", "prompts", "decode", "alpha", "decision", "device", "dtype")}
    in_order = sorted(table["rows"], key=lambda r: r["step"])
    done = [{k: r[k] for k in ("threshold", "deferral_rate", "examined", "step")} for r in in_order][:-1]
    (resumed / "decode_calibration.partial.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in [{"settings": settings}, *done]))
    capsys.readouterr()
    assert calibrate(tiny_dir, router, resumed, prompts, "--max-rounds", "1") == 0
    err = capsys.readouterr().err
    assert f"resuming: {len(done)} thresholds already decoded" in err
    assert err.count("decoded deferral rate") == 1  # only the missing threshold was decoded again
    again = json.loads((resumed / "router.json").read_text())["decode_calibration"]
    assert again["rows"] == table["rows"]


@pytest.mark.parametrize("flags, message", [
    (["--rates", "[1.5]"], "--rates must be fractions"),
    (["--max-rounds", "-1"], "--max-rounds must be 0 or more"),
    (["--tolerance", "0"], "--tolerance must lie in (0, 1)"),
    (["--task", "humaneval"], "calibrate on text no evaluation uses"),
])
def test_bad_calibration_requests_fail_in_one_line(router, tiny_dir, tmp_path, capsys, flags, message):
    rc = deferral(["calibrate", *pair_flags(tiny_dir), "--router", str(router), "--out", str(tmp_path / "o"), *flags])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_folder_without_router_is_refused(tiny_dir, tmp_path, capsys):
    assert deferral(["calibrate", *pair_flags(tiny_dir), "--router", str(tmp_path)]) == 2
    assert "holds no router.json" in capsys.readouterr().err


def test_tables_made_under_another_decision_are_not_read():
    """A router switched to the per_token_gained decision must not read thresholds measured for plain
    scores: neither the logged table nor a decode table made before the switch."""
    from inference.learned import resolve_threshold

    logged = {"alpha": 0.0, "rows": [{"deferral_rate": 0.1, "threshold": 0.6}, {"deferral_rate": 0.3, "threshold": 0.2}]}
    decoded = decoded_rate_table([{"threshold": 0.5, "deferral_rate": 0.1, "examined": 100},
                                  {"threshold": 0.1, "deferral_rate": 0.3, "examined": 100}], alpha=0.0, decision="score")
    meta = {"calibration": logged, "decode_calibration": decoded}
    assert resolve_threshold(meta, None, 0.2, 0.0) == pytest.approx(0.3)  # plain decision: the decode table
    gained = {**meta, "decision": "per_token_gained"}
    with pytest.raises(DeferralError, match="no calibration table for its 'per_token_gained' decision"):
        resolve_threshold(gained, None, 0.2, 0.0)
    measured = {**gained, "decode_calibration": {**decoded, "decision": "per_token_gained"}}
    assert resolve_threshold(measured, None, 0.2, 0.0) == pytest.approx(0.3)
    with pytest.raises(DeferralError, match="outside the rates measured while decoding"):
        resolve_threshold(measured, None, 0.6, 0.0)
