"""`deferral log --devices 2`: a Lightning DDP predict loop over two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tests.test_log import arrays, log_args, write_corpus
from training.logs import logged_data as fmt
from training.logs.log_cli import main as log_main


def test_two_processes_write_one_shard_set_each_and_merge_to_the_single_process_rows(tiny_dir, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", docs=10, high=30)
    flags = ["--docs-per-shard", "2"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "deferral.cli", "log", *log_args(tiny_dir, corpus, ddp, *flags),
           "--devices", "2", "--accelerator", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (ddp / "shards").iterdir()) == ["rank-00000", "rank-00001"]
    rank1 = sorted(p.name for p in (ddp / "shards" / "rank-00001").glob("*.arrow"))
    assert rank1 == ["chunk-000001.arrow", "chunk-000003.arrow"]
    assert json.loads((ddp / "progress.json").read_text())["shards"] == 5

    assert log_main(log_args(tiny_dir, corpus, single, *flags)) == 0
    a, b = arrays(fmt.load_logged(ddp)[0]), arrays(fmt.load_logged(single)[0])
    for column in ["doc_id", "position", "token_id", "drafted_id", "label_mismatch", "label_gap01"]:
        np.testing.assert_array_equal(a[column], b[column], err_msg=column)
    for column in ["features", "label_accept_prob", "label_gap_nll", "tv"]:  # thread counts differ per process
        np.testing.assert_allclose(a[column], b[column], rtol=1e-5, atol=1e-5, err_msg=column)

    # A multi-process folder resumes in one process: every shard counts, whichever rank wrote it.
    assert log_main(log_args(tiny_dir, corpus, ddp, *flags)) == 0
    assert fmt.load_logged(ddp)[0].num_rows == len(b["doc_id"])
