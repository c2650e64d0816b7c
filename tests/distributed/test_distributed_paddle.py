"""paddle.DataParallel and SyncBatchNorm under xfreeze (issue 10): 2 processes on CPU (paddle.distributed.spawn,
gloo), different data per rank, every parameter compared bit for bit across ranks. Bodies in dist_workers.py."""

from __future__ import annotations

import numpy as np
import pytest

import dist_workers as W

paddle = pytest.importorskip("paddle")
pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_staged_unfreeze_under_dataparallel_keeps_ranks_identical(tmp_path):
    r0, r1 = W.launch_paddle(W.paddle_staged_rewrap, tmp_path)
    local = ("1.1._mean", "1.1._variance")  # a training BatchNorm's statistics are rank-local in DataParallel
    for key in r0["end"]:
        if key not in local:
            assert np.array_equal(r0["end"][key], r1["end"][key]), f"ranks differ in {key}"
    start, end = r0["start"], r0["end"]
    for key in (k for k in start if k.startswith("0.")):  # never unfrozen: weights and locked statistics fixed
        assert np.array_equal(start[key], end[key]), key
    assert not np.array_equal(start["1.0.weight"], end["1.0.weight"])  # unfrozen after the wrapper: it trains
    assert r0["groups"] == 2


def test_dataparallel_refuses_changes_it_cannot_honour_before_anything_changes(tmp_path):
    r0, r1 = W.launch_paddle(W.paddle_refusals, tmp_path)
    for r in (r0, r1):
        assert (
            "unfreezes 4 parameters (0.0.weight, 0.0.bias, 0.1.weight, ...) of a model wrapped in DataParallel"
            in r["staged"]
            and "rewrap=" in r["staged"]
        )
        assert "cannot be rebuilt after a freeze (SIGSEGV in EagerReducer::AddDistHook)" in r["staged_freeze"]
        assert "never registered them" in r["unfreeze"] and "Nothing was changed" in r["unfreeze"]
        assert "registered them and would wait" in r["freeze"]  # the plain model inside a live DataParallel
        assert r["agree"] is None and r["bits_unchanged"]
        assert r["trainable"] == r0["trainable"] and not any(r["trainable"][:4])  # still as frozen before wrap
        assert "rank 0: 0.0.weight=F; rank 1: 0.0.weight=T" in r["disagree"]


def test_norm_lock_survives_convert_sync_batchnorm():
    import xfreeze

    model = W.paddle_cnn()
    xfreeze.freeze(model, "0")
    converted = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    converted.train()
    rows = {r.name: r for r in xfreeze.summary(converted, print_table=False).rows}
    assert type(converted[0][1]).__name__ == "SyncBatchNorm"
    assert rows["0.1"].norm == "locked" and rows["1.1"].norm == "train"
    # a locked layer runs in eval mode: Paddle's sync_batch_norm then uses the global statistics, no collective
    # (Paddle has no CPU kernel for sync_batch_norm at all, so the forward itself runs only on GPU)
