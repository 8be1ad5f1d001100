"""Exit statuses of `sivae train`, shared with the launchers (a light module: no torch import)."""

EXIT_OK = 0
EXIT_DIVERGED = 3  # non-finite updates persisted after the allowed rollbacks
EXIT_PREEMPTED = 4  # a stop signal (SIGTERM, SIGUSR1): a checkpoint was written; start again to resume
