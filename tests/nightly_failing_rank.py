"""`sivae eval nightly ...` with one rank failing mid-evaluation (started by test_eval_locks.py, not collected).

    python tests/nightly_failing_rank.py FAILING_RANK SNAPSHOT_STEM -- NIGHTLY ARGS...

On rank FAILING_RANK, the evaluation of SNAPSHOT_STEM raises (as an out-of-memory would) at its second
feature batch, after the ranks have already met in collectives; everything else runs as the CLI does.
"""

import sys

from sivae.eval import context
from sivae.launch.cli import main


def inject(failing_rank: int, stem: str) -> None:
    features = context.EvalContext.features
    calls = {"n": 0}

    def failing_features(self, images):
        if self.env.rank == failing_rank and self.loaded.path.stem == stem:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("CUDA out of memory (injected)")
        return features(self, images)

    context.EvalContext.features = failing_features


if __name__ == "__main__":
    split = sys.argv.index("--")
    inject(int(sys.argv[1]), sys.argv[2])
    sys.exit(main(sys.argv[split + 1 :]))
