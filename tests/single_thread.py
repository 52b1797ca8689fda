"""A fixture that runs a test module with one torch thread.

Tiny models gain nothing from intra-op threads, and on a busy machine the threads' spinning makes
them many times slower (measured: 26 s instead of 8 minutes for tests/test_engine.py on 2 shared
cores). Import it into a test module: `from tests.single_thread import one_thread  # noqa: F401`.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
