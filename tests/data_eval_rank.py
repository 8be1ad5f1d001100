"""One rank of the two-process eval-pass test (started by test_data_loader.py, not collected by pytest).

    python tests/data_eval_rank.py DATA SPLIT RESOLUTION BATCH OUT.json   (env: MASTER_ADDR/PORT, RANK, WORLD_SIZE)
"""

import json
import sys

import torch
import torch.distributed as dist

from sivae.data_pipeline.loader import eval_batches


def main(data: str, split: str, resolution: int, batch_size: int, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    keys, batches = [], 0
    for batch in eval_batches(data, split, resolution, batch_size, rank=rank, world_size=world, workers=1):
        valid = batch.valid.sum().reshape(1).to(torch.int64)
        dist.all_reduce(valid)  # one collective per batch: ranks with unequal batch counts would hang here
        keys += [k for k, ok in zip(batch.keys, batch.valid.tolist()) if ok]
        batches += 1
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "keys": keys, "batches": batches})
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
