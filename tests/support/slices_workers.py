"""Bodies of the distributed tests of split tensors (issue 21), run by dist_workers.launch_torch on 2 CPU ranks."""

from __future__ import annotations

import numpy as np

from dist_workers import _error


def torch_ddp_rows(rank: int) -> dict:
    """Rows chosen before DDP: ranks stay identical, frozen rows fixed; a split after wrapping and under FSDP2 is
    refused."""
    import torch
    import xfreeze
    from harness import kit, vocab_model

    fw = kit("torch")
    torch.manual_seed(0)
    model = vocab_model(fw, 12, 4)
    start = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    xfreeze.freeze(model, "*", "!embed.weight[8:]", "!head[1,5]")
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = xfreeze.optimizer(model, "adamw", lr=0.1, weight_decay=0.25)
    for step in range(3):
        g = torch.Generator().manual_seed(1000 * rank + step)  # different data on every rank
        ddp(torch.randint(0, 12, (6,), generator=g)).square().mean().backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
    end = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    out = {"start": start, "end": end, "after_wrap": _error(lambda: xfreeze.unfreeze(ddp, "embed.weight[0:2]"))}
    from torch.distributed.fsdp import fully_shard

    sharded = vocab_model(fw, 12, 4)
    fully_shard(sharded)
    out["fsdp2"] = _error(lambda: xfreeze.freeze(sharded, "embed.weight[0:8]"))
    split_first = vocab_model(fw, 12, 4)  # rows chosen first, then fully_shard: refused at the first forward
    xfreeze.freeze(split_first, "*", "!embed.weight[8:]")
    fully_shard(split_first)
    out["split_then_fsdp2"] = _error(lambda: split_first(torch.randint(0, 12, (6,))))
    out["frozen_rows_fixed"] = bool(np.array_equal(start["embed.weight"][:8], end["embed.weight"][:8]))
    return out
