"""A torch distributed job (gloo on CPU): each rank contributes rank + 1 to an all-reduce."""

from __future__ import annotations

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"rank {rank} of world_size={world}: all-reduced sum={value.item():g}", flush=True)
dist.destroy_process_group()
