"""Which device a process takes: its index on its node, never its global rank."""

import pytest

from sivae.core import distributed
from sivae.core.distributed import local_rank_from_environment


@pytest.mark.parametrize(("env", "gpus", "expected"), [
    ({"LOCAL_RANK": "3", "RANK": "11", "SLURM_LOCALID": "1"}, 4, 3),  # the launcher's word first
    ({"SLURM_LOCALID": "1", "RANK": "9"}, 4, 1),  # srun without a launcher
    ({"RANK": "9"}, 4, 1),  # 4-GPU nodes: rank 9 is GPU 1 of the third node
    ({"RANK": "5"}, 0, 0),  # CPU only
    ({}, 2, 0),
])
def test_local_rank_is_the_index_on_the_node(monkeypatch, env, gpus, expected):
    for name in ("LOCAL_RANK", "SLURM_LOCALID", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: gpus)
    assert local_rank_from_environment() == expected
