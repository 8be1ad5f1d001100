"""`sivae launch ...`: start training processes (one machine, or the per-node commands of several), Slurm
training and evaluation jobs, the Slurm task shim, DeepSpeed checkpoint conversion and op preparation."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from sivae.launch.launchers import (
    DEFAULT_PORT,
    LAUNCHERS,
    Launch,
    LaunchError,
    effective_backend,
    launcher_command,
    launcher_env,
)
from sivae.launch.slurm import (
    RENDEZVOUS_DIR_KEY,
    JobSpec,
    SlurmError,
    agree_port,
    recurring_script,
    slurm_place,
    submit,
    training_script,
)

SLURM_BACKENDS = ("accelerate", "deepspeed", "torchrun")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch",
        help="start training processes: one machine, multi-node commands, Slurm jobs (preemption, requeue)",
        description="Start `sivae train` processes with a launcher (local, accelerate, deepspeed, torchrun), write "
        "and submit Slurm jobs for training and for the nightly evaluation, map Slurm's variables to ranks, "
        "convert checkpoints to snapshots.",
    )
    commands = p.add_subparsers(dest="launch_command", required=True, metavar="COMMAND")

    for name in LAUNCHERS:
        what = {"local": "one process (train.backend auto: single)",
                "accelerate": "accelerate launch (auto: the Accelerate DDP backend)",
                "deepspeed": "DeepSpeed's launcher (auto: the DeepSpeed backend)",
                "torchrun": "torchrun (auto: the Accelerate DDP backend)"}[name]  # fmt: skip
        q = commands.add_parser(
            name, help=f"train with {what}",
            description=f"Train CONFIG with {what}. One node: starts the processes here. Several nodes: prints the "
            "command to run on each node, or runs this node's part with --node-rank (or --slurm). key=value "
            "arguments override the config as for `sivae train`.",
        )  # fmt: skip
        _training_arguments(q)
        if name != "local":
            q.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
            q.add_argument("--gpus-per-node", type=int, default=1,
                           help="processes per node, one per GPU (on CPU: processes) (default 1)")  # fmt: skip
            q.add_argument("--node-rank", type=int, help="this node's rank (several nodes): run its part")
            q.add_argument("--master-addr", help="address of node 0 (several nodes; default 127.0.0.1 on one)")
            q.add_argument("--master-port", type=int, default=DEFAULT_PORT, help=f"rendezvous port ({DEFAULT_PORT})")
            q.add_argument("--slurm", action="store_true",
                           help="take the node rank and rendezvous from Slurm's variables (one task per node)")
            q.add_argument("--print", action="store_true", dest="print_only",
                           help="print the command(s) instead of running them")  # fmt: skip
        q.set_defaults(handler=main_launch, launcher=name)

    s = commands.add_parser(
        "slurm", help="write and submit the sbatch script of a training job (--dry-run prints it)",
        description="Write RUN_DIR/slurm/train.sbatch and submit it: NODES x GPUS_PER_NODE processes (one Slurm task "
        "each; torchrun: one task per node) that map Slurm's variables to ranks and train CONFIG in RUN_DIR. "
        "A warning signal before the time limit makes the trainers checkpoint and exit, and the job requeues "
        "itself; every start resumes RUN_DIR.",
    )  # fmt: skip
    _training_arguments(s, device=False)
    s.add_argument("--nodes", type=int, required=True)
    s.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (processes) per node")
    s.add_argument("--backend", choices=SLURM_BACKENDS, required=True,
                   help="accelerate / deepspeed: one Slurm task per process with that backend; torchrun: one "
                        "torchrun per node (Accelerate DDP backend unless the config names another)")  # fmt: skip
    _job_arguments(s, default_time=None)
    s.add_argument("--warn-seconds", type=int, default=300,
                   help="seconds before the time limit that the checkpoint-and-requeue signal comes (300)")
    s.add_argument("--cpu-only", action="store_true",
                   help="request no GPUs (CPU nodes: GPUS_PER_NODE processes train on CPU with gloo)")
    s.set_defaults(handler=main_slurm)

    e = commands.add_parser(
        "eval-job", help="submit the nightly evaluation as a Slurm job, optionally recurring",
        description="Write RUNS_DIR/eval-report/nightly.sbatch and submit it: `sivae eval nightly RUNS_DIR "
        "[--eval-args]` over the job's processes. With --every the job submits itself again to begin that long after "
        "it started (sbatch --begin), so one submission starts a series; scancel the pending job to end it.",
    )  # fmt: skip
    e.add_argument("runs_dir", type=Path, help="directory holding run directories")
    e.add_argument("--every", help="recur: a Slurm time offset such as 24hours or 12hours (default: run once)")
    e.add_argument("--nodes", type=int, default=1)
    e.add_argument("--gpus-per-node", type=int, default=1, help="GPUs (processes) per node (1)")
    e.add_argument("--cpu-only", action="store_true", help="request no GPUs")
    _job_arguments(e, default_time="04:00:00")
    e.add_argument("--eval-args", default="", metavar="'OPTIONS'",
                   help="options of `sivae eval nightly`, quoted as one argument: --eval-args '--ood-data data/svhn'")
    e.set_defaults(handler=main_eval_job)

    t = commands.add_parser(
        "task", help="(inside a Slurm job step) map Slurm's variables to RANK/WORLD_SIZE/... and run a command",
        description="Set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR (the job's first "
        "node) and MASTER_PORT (SIVAE_MASTER_PORT or MASTER_PORT if set, else from the job id; if that is taken on "
        "the first node, the next free one, which rank 0 publishes in SIVAE_RENDEZVOUS_DIR) from this srun task's "
        "Slurm variables, then replace this process with COMMAND (signals reach it directly).",
    )  # fmt: skip
    t.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    t.set_defaults(handler=main_task)

    c = commands.add_parser(
        "convert", help="a checkpoint (DeepSpeed directory or file) -> an inference snapshot for `sivae eval`",
        description="Write the EMA networks of CHECKPOINT (a DeepSpeed checkpoint directory RUN/checkpoints/ckpt-N/ "
        "or a checkpoint file) as a snapshot OUT/snapshot-N.pt with its ready marker.",
    )  # fmt: skip
    c.add_argument("checkpoint", type=Path)
    c.add_argument("--out", type=Path, required=True, help="directory for the snapshot (e.g. RUN/snapshots)")
    c.set_defaults(handler=main_convert)

    r = commands.add_parser(
        "prepare", help="build DeepSpeed's ops once before starting ranks (CPU: its shared-memory op, ~1 min)",
        description="Build the op DeepSpeed builds at its first distributed start, in this one process. The "
        "deepspeed launcher does it itself; Slurm jobs run it once per node.",
    )  # fmt: skip
    r.set_defaults(handler=main_prepare)


def _training_arguments(p: argparse.ArgumentParser, device: bool = True) -> None:
    p.add_argument("config", type=Path, help="run config YAML (see configs/)")
    p.add_argument("--run-dir", type=Path, required=True, help="run directory (created, or resumed)")
    if device:
        p.add_argument("--device", help="passed to `sivae train` (auto, cpu, cuda)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def _job_arguments(p: argparse.ArgumentParser, default_time: str | None) -> None:
    p.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per process (8)")
    p.add_argument("--time", default=default_time, help="time limit, HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--job-name", help="job name (default sivae-<run or runs dir name>)")
    p.add_argument("--output", help="stdout path (default under the run dir's slurm/: %%x-%%j.out)")
    p.add_argument("--error", help="stderr path (default the same as --output with .err)")
    p.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")


# ------------------------------------------------------------------------------------------------
# handlers


def _config_backend(args: argparse.Namespace) -> str:
    """Validate the config now (a bad key is reported before any process starts); its train.backend."""
    from sivae.core.config import load_config
    from sivae.train.schema import RunConfig

    return load_config(RunConfig, args.config, args.overrides).train.backend


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main_launch(args: argparse.Namespace) -> int:
    backend = effective_backend(_config_backend(args), args.launcher)
    train_args = [str(args.config), "--run-dir", str(args.run_dir)]
    if args.device:
        train_args += ["--device", args.device]
    train_args += [*args.overrides, f"train.backend={backend}"]
    options = {}
    if args.launcher != "local":
        options = {"nodes": args.nodes, "procs_per_node": args.gpus_per_node, "master_port": args.master_port}
        if args.slurm:
            try:
                place = agree_port(slurm_place(os.environ), os.environ)
            except SlurmError as exc:
                print(f"sivae launch {args.launcher}: {exc}", file=sys.stderr)
                return 2
            if place.num_nodes != args.nodes:
                print(f"sivae launch {args.launcher}: --nodes {args.nodes} but the Slurm job has {place.num_nodes}",
                      file=sys.stderr)  # fmt: skip
                return 2
            options.update(node_rank=place.node_rank, master_addr=place.master_addr, master_port=place.master_port)
        else:
            if args.node_rank is not None:
                options["node_rank"] = args.node_rank
            if args.master_addr:
                options["master_addr"] = args.master_addr
    try:
        launch = Launch(args.launcher, tuple(train_args), **options)
    except LaunchError as exc:
        print(f"sivae launch {args.launcher}: {exc}", file=sys.stderr)
        return 2
    several = launch.nodes > 1 and args.node_rank is None and not args.slurm
    if getattr(args, "print_only", False) or several:
        return _print_per_node(args, launch)
    cuda = _cuda()
    if backend == "deepspeed" and not cuda:
        from sivae.train.deepspeed_backend import prepare_ops

        print(f"sivae launch: DeepSpeed: {prepare_ops()}", file=sys.stderr, flush=True)
    command = launcher_command(launch)
    env = {**os.environ, **launcher_env(launch, cuda)}
    if args.launcher != "local" and args.slurm:
        # Slurm's warning signal reaches every process of the step; the launcher must outlive it (the trainers
        # catch it and checkpoint). An ignored signal stays ignored across exec; the trainers install handlers.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    print(f"sivae launch: {shlex.join(command)}", file=sys.stderr, flush=True)
    os.execvpe(command[0], command, env)
    return 0  # not reached


def _print_per_node(args: argparse.Namespace, launch: Launch) -> int:
    from dataclasses import replace

    addr = launch.master_addr if (launch.nodes == 1 or args.master_addr) else "NODE0_ADDRESS"
    print(f"# {launch.nodes} node(s) x {launch.procs_per_node} process(es); run on each node:")
    for rank in range(launch.nodes):
        command = launcher_command(replace(launch, node_rank=rank, master_addr=addr))
        env = " ".join(f"{k}={v}" for k, v in launcher_env(launch, _cuda()).items())
        print(f"# node {rank}\n{env + ' ' if env else ''}{shlex.join(command)}")
    return 0


def _slurm_dir(run_dir: Path) -> Path:
    return run_dir.resolve() / "slurm"


def _spec(args: argparse.Namespace, *, name: str, tasks_per_node: int, cpus_per_task: int, gpus: int,
          log_dir: Path, warn_seconds: int | None, requeue: bool) -> JobSpec:  # fmt: skip
    output = args.output or str(log_dir / "%x-%j.out")
    error = args.error or (output[: -len(".out")] + ".err" if output.endswith(".out") else output + ".err")
    # log_dir is under the run (or runs) directory, which every node shares: where rank 0 publishes a port
    # when the one derived from the job id is taken (slurm.agree_port)
    return JobSpec(name=args.job_name or name, nodes=args.nodes, tasks_per_node=tasks_per_node,
                   cpus_per_task=cpus_per_task, time=args.time, partition=args.partition, account=args.account,
                   output=output, error=error, gpus_per_node=0 if args.cpu_only else gpus, requeue=requeue,
                   warn_seconds=warn_seconds, workdir=os.getcwd(),
                   env={RENDEZVOUS_DIR_KEY: str(log_dir)})  # fmt: skip


def _write_and_submit(script: str, path: Path, dry_run: bool, what: str) -> int:
    if dry_run:
        print(script, end="")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    try:
        job = submit(str(path))
    except SlurmError as exc:
        print(f"sivae launch: {exc}", file=sys.stderr)
        return 1
    print(f"submitted {what} as Slurm job {job} ({path})")
    return 0


def main_slurm(args: argparse.Namespace) -> int:
    for flag, value in (("--nodes", args.nodes), ("--gpus-per-node", args.gpus_per_node),
                        ("--cpus-per-task", args.cpus_per_task)):  # fmt: skip
        if value < 1:
            print(f"sivae launch slurm: {flag} must be >= 1", file=sys.stderr)
            return 2
    backend = effective_backend(_config_backend(args), args.backend)
    if args.backend != "torchrun" and backend != args.backend:
        print(f"sivae launch slurm: the config trains with train.backend={backend} but --backend is {args.backend}",
              file=sys.stderr)  # fmt: skip
        return 2
    run_dir, config = args.run_dir.resolve(), args.config.resolve()
    sivae = [sys.executable, "-m", "sivae"]  # the nodes share this environment (a shared file system)
    overrides = [*args.overrides, f"train.backend={backend}"]
    log_dir = _slurm_dir(run_dir)
    if args.backend == "torchrun":
        step = [*sivae, "launch", "torchrun", str(config), "--run-dir", str(run_dir), "--nodes", str(args.nodes),
                "--gpus-per-node", str(args.gpus_per_node), "--slurm", *overrides]  # fmt: skip
        spec = _spec(args, name=f"sivae-{run_dir.name}", tasks_per_node=1,
                     cpus_per_task=args.cpus_per_task * args.gpus_per_node, gpus=args.gpus_per_node, log_dir=log_dir,
                     warn_seconds=args.warn_seconds, requeue=True)  # fmt: skip
    else:
        step = [*sivae, "launch", "task", "--", *sivae, "train", str(config), "--run-dir", str(run_dir), *overrides]
        spec = _spec(args, name=f"sivae-{run_dir.name}", tasks_per_node=args.gpus_per_node,
                     cpus_per_task=args.cpus_per_task, gpus=args.gpus_per_node, log_dir=log_dir,
                     warn_seconds=args.warn_seconds, requeue=True)  # fmt: skip
    per_node = [*sivae, "launch", "prepare"] if backend == "deepspeed" else None
    try:
        script = training_script(spec, step, per_node_step=per_node)
    except SlurmError as exc:
        print(f"sivae launch slurm: {exc}", file=sys.stderr)
        return 2
    return _write_and_submit(script, log_dir / "train.sbatch", args.dry_run, f"training of {run_dir}")


def main_eval_job(args: argparse.Namespace) -> int:
    runs_dir = args.runs_dir.resolve()
    eval_args = shlex.split(args.eval_args)
    sivae = [sys.executable, "-m", "sivae"]
    step = [*sivae, "launch", "task", "--", *sivae, "eval", "nightly", str(runs_dir), *eval_args]
    report = runs_dir / "eval-report"
    spec = _spec(args, name=f"sivae-eval-{runs_dir.name}", tasks_per_node=args.gpus_per_node,
                 cpus_per_task=args.cpus_per_task, gpus=args.gpus_per_node, log_dir=report / "slurm",
                 warn_seconds=None, requeue=False)  # fmt: skip
    path = report / "nightly.sbatch"
    try:
        script = recurring_script(spec, step, script_path=str(path), every=args.every)
    except SlurmError as exc:
        print(f"sivae launch eval-job: {exc}", file=sys.stderr)
        return 2
    if not args.dry_run:
        (report / "slurm").mkdir(parents=True, exist_ok=True)
    return _write_and_submit(script, path, args.dry_run, f"the nightly evaluation of {runs_dir}")


def main_task(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("sivae launch task: no command given (sivae launch task -- COMMAND ...)", file=sys.stderr)
        return 2
    try:
        place = agree_port(slurm_place(os.environ), os.environ)
    except SlurmError as exc:
        print(f"sivae launch task: {exc}", file=sys.stderr)
        return 2
    os.execvpe(cmd[0], cmd, {**os.environ, **place.torch_env()})
    return 0  # not reached


def main_convert(args: argparse.Namespace) -> int:
    from sivae.core.snapshot import write_snapshot
    from sivae.eval.loading import LoadError, load_model

    try:
        loaded = load_model(args.checkpoint)
    except LoadError as exc:
        print(f"sivae launch convert: {exc}", file=sys.stderr)
        return 1
    model = loaded.model
    path = write_snapshot(args.out, images=loaded.images, config=loaded.config.raw, lod=loaded.lod,
                          blend=loaded.blend, resolution=loaded.resolution,
                          networks={name: model.network(name).state_dict() for name in model.networks})  # fmt: skip
    print(f"{args.checkpoint} ({loaded.format}, {loaded.kimg:g} kimg, {loaded.resolution}px) -> {path}")
    return 0


def main_prepare(args: argparse.Namespace) -> int:
    from sivae.train.deepspeed_backend import prepare_ops

    print(f"sivae launch prepare: DeepSpeed: {prepare_ops()}")
    return 0
