"""Split tensors under DDP and FSDP2 (issue 21): 2 processes on CPU over gloo, different data per rank."""

from __future__ import annotations

import numpy as np
import pytest

import dist_workers as W
import slices_workers as S

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_rows_chosen_before_ddp_train_identically_on_every_rank(tmp_path):
    r0, r1 = W.launch_torch(S.torch_ddp_rows, tmp_path)
    assert all(np.array_equal(r0["end"][k], r1["end"][k]) for k in r0["end"])  # ranks identical, bit for bit
    start, end = r0["start"], r0["end"]
    assert r0["frozen_rows_fixed"] and not np.array_equal(start["embed.weight"][8:], end["embed.weight"][8:])
    keep = [i for i in range(12) if i not in (1, 5)]
    assert np.array_equal(start["head.weight"][keep], end["head.weight"][keep])
    assert "never registered them" in r0["after_wrap"] and "Nothing was changed" in r0["after_wrap"]
    assert "not supported under FSDP2" in r0["fsdp2"] and "'embed.weight[0:8]'" in r0["fsdp2"]
    assert "sharded by FSDP2 after they were chosen" in r0["split_then_fsdp2"]
