"""Entry points: the `sivae` command, distributed backends' launchers and Slurm jobs."""
