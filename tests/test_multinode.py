"""Several nodes on one machine: two launchers with node ranks 0 and 1, two processes each, meeting at a
rendezvous on 127.0.0.1, train the 8-16px style run to the same bits as one node of four processes."""

import pytest
import torch
from launch_helpers import IMAGES, ITERATIONS, final_state, launch_nodes, ranks, train_args


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{what}: {len(differing)} of {len(a)} tensors differ, e.g. {differing[:3]}"


@pytest.mark.slow
def test_two_nodes_of_two_processes_end_bit_identical_to_one_node_of_four(tmp_path, digits16):
    runs = {}
    for nodes, processes in ((1, 4), (2, 2)):
        run_dir, record = tmp_path / f"{nodes}x{processes}", tmp_path / f"record-{nodes}x{processes}"
        # the same global batch: 16 = 4 processes x micro-batches of 4, one accumulation step
        launch_nodes("torchrun", train_args(run_dir, digits16), nodes=nodes, processes=processes, record=record)
        runs[nodes] = final_state(run_dir), ranks(record)
    ((weights1, state1), records1), ((weights2, state2), records2) = runs[1], runs[2]

    # node 1's processes are ranks 2 and 3 of the job but processes 0 and 1 of their node
    places = [{k: r["place"][k] for k in ("rank", "local_rank", "RANK", "LOCAL_RANK")} for r in records2]
    assert places == [{"rank": g, "local_rank": g % 2, "RANK": str(g), "LOCAL_RANK": str(g % 2)} for g in range(4)]
    assert [r["place"]["local_rank"] for r in records1] == [0, 1, 2, 3]

    # the data is sharded by global rank: each rank draws the batches of the same rank on one node, and no two
    # ranks draw the same batch (sharding by local rank would give ranks 0 and 2 the same ones)
    assert [r["batches"] for r in records2] == [r["batches"] for r in records1]
    drawn = [batch for r in records2 for batch in r["batches"]]
    assert len(drawn) == len(set(drawn)) == 4 * ITERATIONS

    for state in (state1, state2):
        assert (state["progress"]["images"], state["progress"]["iteration"], state["world_size"]) == (
            IMAGES, ITERATIONS, 4)  # fmt: skip
    assert state2["progress"] == state1["progress"]
    assert_bit_identical(weights2, weights1, "model weights")
    assert_bit_identical(state2["ema"], state1["ema"], "EMA weights")
