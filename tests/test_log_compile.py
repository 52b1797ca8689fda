"""--compile: the torch.compile'd feature and label step gives the eager rows (up to float rounding)."""

from __future__ import annotations

import numpy as np

from tests.test_log import arrays, log_args, write_corpus
from training.logs import logged_data as fmt
from training.logs.log_cli import main as log_main


def test_compiled_rows_match_eager_rows(tiny_dir, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", docs=4)
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert log_main(log_args(tiny_dir, corpus, eager)) == 0  # auto: off for a 99-token vocabulary
    assert log_main(log_args(tiny_dir, corpus, compiled, "--compile", "on")) == 0
    a, b = arrays(fmt.load_logged(eager)[0]), arrays(fmt.load_logged(compiled)[0])
    for column in ["doc_id", "position", "token_id", "drafted_id", "label_mismatch", "label_gap01"]:
        np.testing.assert_array_equal(a[column], b[column], err_msg=column)
    for column in ["features", "label_accept_prob", "label_gap_nll", "tv"]:
        np.testing.assert_allclose(a[column], b[column], rtol=1e-4, atol=1e-5, err_msg=column)


def test_compile_choice():
    import pytest

    from deferral.errors import DeferralError
    from training.logs.log_pipeline import should_compile

    assert should_compile("auto", 49152) and not should_compile("auto", 99)
    assert should_compile("on", 99) and not should_compile("off", 49152)
    with pytest.raises(DeferralError, match="auto, on or off"):
        should_compile("yes", 10)
