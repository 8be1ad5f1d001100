"""`sivae` with test instrumentation, for trainer tests that need a separate process (launchers start it as
their program: `launch.launchers.Launch(program=(this file,))`).

Environment switches (all optional):
- SIVAE_TEST_KILL_IN_CHECKPOINT=N: SIGKILL the process in the middle of writing its N-th checkpoint
  (after part of the file is written), as a node failure would. Checkpoint files are the single-file
  format and, under DeepSpeed, the model-states file that carries the trainer state (rank 0's).
- SIVAE_TEST_RECORD=DIR: each rank writes DIR/rank{r}.pt with the sha1 of every training batch it
  drew, its final model parameters and where it stood: the trainer's rank and local rank and the
  RANK / LOCAL_RANK its launcher exported.
"""

import hashlib
import os
import signal
import sys

import torch

from sivae.core import checkpoint, deepspeed_checkpoint
from sivae.launch.cli import main
from sivae.train import trainer

kill_at = int(os.environ.get("SIVAE_TEST_KILL_IN_CHECKPOINT", "0"))
if kill_at:
    saves = {"count": 0}
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        ours = isinstance(obj, dict) and (obj.get("format") == checkpoint.FORMAT
                                          or deepspeed_checkpoint.CLIENT_KEY in obj)
        if ours:
            saves["count"] += 1
            if saves["count"] == kill_at:
                out = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f  # noqa: SIM115
                out.write(b"PK\x03\x04" + b"\0" * 4096)  # the start of a zip archive, then death
                out.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save

record_dir = os.environ.get("SIVAE_TEST_RECORD")
if record_dir:
    batches: list[str] = []
    real_next = trainer.Trainer.next_micro_batches
    real_run = trainer.Trainer.run

    def next_micro_batches(self, pos):
        micro = real_next(self, pos)
        batches.extend(hashlib.sha1(x.cpu().numpy().tobytes()).hexdigest() for x in micro)
        return micro

    def run(self):
        code = real_run(self)
        params = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        place = {"rank": self.env.rank, "local_rank": self.env.local_rank, "world_size": self.env.world_size,
                 **{name: os.environ.get(name) for name in ("RANK", "LOCAL_RANK")}}  # fmt: skip
        torch.save({"batches": batches, "params": params, "place": place},
                   os.path.join(record_dir, f"rank{self.env.rank}.pt"))
        return code

    trainer.Trainer.next_micro_batches = next_micro_batches
    trainer.Trainer.run = run

sys.exit(main(sys.argv[1:]))
