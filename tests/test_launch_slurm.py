"""Launchers and Slurm: Slurm's variables -> ranks (hand-made environments), launcher command lines, sbatch
scripts, and a real one-node Slurm running a 2-task DeepSpeed job that is warned, checkpoints, requeues itself
and finishes with the step count and weights of the uninterrupted run."""

import os
import shlex
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from launch_helpers import IMAGES, ITERATIONS, REPO, RUN_8_16, TINY, final_state, max_difference
from slurm_cluster import LocalSlurm, unavailable

from sivae.launch.cli import main as sivae
from sivae.launch.launchers import Launch, LaunchError, deepspeed_world_info, launcher_command
from sivae.launch.slurm import (
    PORT_SPAN,
    RENDEZVOUS_DIR_KEY,
    SlurmError,
    agree_port,
    expand_hostlist,
    master_port,
    port_file,
    slurm_place,
)

# ------------------------------------------------------------------------------------------------
# Slurm's variables


@pytest.mark.parametrize(("hostlist", "hosts"), [
    ("vm", ["vm"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("a[8-10],login", ["a8", "a9", "a10", "login"]),
    ("rack[1-2]-n[0-1]", ["rack1-n0", "rack1-n1", "rack2-n0", "rack2-n1"]),
    ("node-[009-011],gpu[1,3]", ["node-009", "node-010", "node-011", "gpu1", "gpu3"]),
])  # fmt: skip
def test_host_lists_expand_like_scontrol_show_hostnames(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


def slurm_env(**overrides) -> dict[str, str]:
    """Task 13 of a 4-node x 8-task job, as srun sets it up: node 1, local task 5."""
    env = {"SLURM_PROCID": "13", "SLURM_NTASKS": "32", "SLURM_LOCALID": "5", "SLURM_NODEID": "1",
           "SLURM_JOB_NUM_NODES": "4", "SLURM_TASKS_PER_NODE": "8(x4)", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu[017-020]"}  # fmt: skip
    return {**env, **overrides}


def test_a_task_of_a_multi_node_job_gets_its_ranks_and_the_rendezvous():
    place = slurm_place(slurm_env())
    assert place.torch_env() == {"RANK": "13", "WORLD_SIZE": "32", "LOCAL_RANK": "5", "LOCAL_WORLD_SIZE": "8",
                                 "NODE_RANK": "1", "MASTER_ADDR": "gpu017", "MASTER_PORT": "24242"}  # fmt: skip
    assert place.num_nodes == 4
    # every task of the job, and the job again after a requeue (same id), meet at the same port
    assert slurm_place(slurm_env(SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")).master_port == 24242
    assert master_port(4242) == master_port(4242 + PORT_SPAN) == 24242
    assert max(master_port(job) for job in range(2 * PORT_SPAN)) < 32768  # below the ephemeral ports


def test_uneven_tasks_per_node_and_the_older_variable_names():
    env = slurm_env(SLURM_TASKS_PER_NODE="2(x2),1", SLURM_NTASKS="5", SLURM_NODEID="2", SLURM_LOCALID="0",
                    SLURM_PROCID="4", SLURM_JOB_NUM_NODES="3")  # fmt: skip
    del env["SLURM_JOB_NODELIST"]
    env["SLURM_NODELIST"] = "c[1-3]"
    place = slurm_place(env)
    assert (place.rank, place.local_world_size, place.node_rank, place.master_addr) == (4, 1, 2, "c1")


@pytest.mark.parametrize(("change", "message"), [
    ({"SLURM_PROCID": None}, "SLURM_PROCID is not set"),
    ({"SLURM_NTASKS": "two"}, "SLURM_NTASKS='two' is not a non-negative integer"),
    ({"SLURM_PROCID": "32"}, "inconsistent Slurm variables"),
    ({"SLURM_JOB_NODELIST": "gpu[x-y]"}, "cannot read the host range"),
    ({"SLURM_TASKS_PER_NODE": "8"}, "no entry for node 1"),
])  # fmt: skip
def test_missing_or_bad_slurm_variables_are_named(change, message):
    env = slurm_env(**{k: v for k, v in change.items() if v is not None})
    for key in (k for k, v in change.items() if v is None):
        del env[key]
    with pytest.raises(SlurmError, match=message):
        slurm_place(env)


def test_the_task_shim_runs_the_command_with_the_mapped_variables():
    env = {**os.environ, **slurm_env()}
    code = "import os; print(' '.join(os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR')))"
    proc = subprocess.run([sys.executable, "-m", "sivae", "launch", "task", "--", sys.executable, "-c", code],
                          env=env, cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["13", "32", "5", "gpu017"]
    outside = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run([sys.executable, "-m", "sivae", "launch", "task", "--", "true"], env=outside, cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "SLURM_NODEID is not set: run this inside a Slurm job step" in proc.stderr


# ------------------------------------------------------------------------------------------------
# the rendezvous port: the user's, the derived one, or rank 0's fallback when it is taken

MASTER = {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # task 0: on the first host


@contextmanager
def taken(port: int):
    """`port` held by a listening server on this host, as another job's rendezvous would hold it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        yield


def test_a_port_the_user_sets_is_honoured_by_every_task(tmp_path):
    for extra, port in (({"MASTER_PORT": "30001"}, 30001),
                        ({"SIVAE_MASTER_PORT": "30002", "MASTER_PORT": "30001"}, 30002)):  # fmt: skip
        shared = {**extra, RENDEZVOUS_DIR_KEY: str(tmp_path)}
        for env in (slurm_env(**MASTER, **shared), slurm_env(**shared)):
            place = agree_port(slurm_place(env), env)
            assert place.master_port == port and place.torch_env()["MASTER_PORT"] == str(port)
    assert not list(tmp_path.iterdir()), "a port the user set is not published"
    with pytest.raises(SlurmError, match="SIVAE_MASTER_PORT='http' is not a TCP port"):
        slurm_place(slurm_env(SIVAE_MASTER_PORT="http"))
    with taken(30003), pytest.raises(SlurmError, match="MASTER_PORT=30003 is taken on"):
        env = slurm_env(**MASTER, MASTER_PORT="30003")
        agree_port(slurm_place(env), env)


@pytest.mark.parametrize(("job", "derived", "fallback"), [
    (4242, 24242, 24243),
    (PORT_SPAN - 1, 32767, 20000),  # the top of the range wraps to its bottom
])  # fmt: skip
def test_a_taken_derived_port_moves_every_task_to_the_port_rank_0_publishes(tmp_path, job, derived, fallback):
    shared = {"SLURM_JOB_ID": str(job), RENDEZVOUS_DIR_KEY: str(tmp_path)}
    master, other = slurm_env(**MASTER, **shared), slurm_env(**shared)
    with taken(derived):
        assert agree_port(slurm_place(master), master).master_port == fallback
    assert port_file(tmp_path, master).read_text() == f"{fallback}\n"
    assert agree_port(slurm_place(other), other).master_port == fallback  # a task on another node reads it
    # a requeued job (same id) starts again: its rank 0 probes again (the derived port is free now), and its
    # other tasks wait for that choice instead of reading the previous start's
    again = {"SLURM_RESTART_COUNT": "1"}
    with pytest.raises(SlurmError, match=rf"rank 0 published no rendezvous port in .*-{job}\.1 within 0\.3 s"):
        agree_port(slurm_place({**other, **again}), {**other, **again}, timeout=0.3)
    assert agree_port(slurm_place({**master, **again}), {**master, **again}).master_port == derived
    assert agree_port(slurm_place({**other, **again}), {**other, **again}).master_port == derived


def test_without_a_shared_directory_a_taken_derived_port_fails_at_once_naming_it():
    master = slurm_env(**MASTER)
    with taken(24242), pytest.raises(SlurmError, match=r"MASTER_PORT 24242 \(derived from job id 4242\) is taken on "
                                                       r".*set SIVAE_MASTER_PORT"):  # fmt: skip
        agree_port(slurm_place(master), master)
    assert agree_port(slurm_place(master), master).master_port == 24242  # free: the derived port as it is


def test_the_task_shim_exports_the_agreed_port(tmp_path):
    code = "import os; print(os.environ['MASTER_PORT'])"
    command = [sys.executable, "-m", "sivae", "launch", "task", "--", sys.executable, "-c", code]
    with taken(24242):
        shared = subprocess.run(command, env={**os.environ, **slurm_env(**MASTER), RENDEZVOUS_DIR_KEY: str(tmp_path)},
                                cwd=REPO, capture_output=True, text=True)  # fmt: skip
        alone = subprocess.run(command, env={**os.environ, **slurm_env(**MASTER)}, cwd=REPO, capture_output=True,
                               text=True)  # fmt: skip
    assert (shared.returncode, shared.stdout) == (0, "24243\n"), shared.stderr
    assert alone.returncode == 2 and "sivae launch task: MASTER_PORT 24242 (derived from job id 4242)" in alone.stderr


# ------------------------------------------------------------------------------------------------
# launcher command lines


def test_launcher_commands_for_node_1_of_2():
    train = ("cfg.yaml", "--run-dir", "r")
    common = {"nodes": 2, "procs_per_node": 8, "node_rank": 1, "master_addr": "n0", "master_port": 6000, "python": "py"}
    assert launcher_command(Launch("torchrun", train, **common)) == [
        "py", "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=8", "--node-rank=1", "--master-addr=n0",
        "--master-port=6000", "-m", "sivae", "train", *train]  # fmt: skip
    assert launcher_command(Launch("accelerate", train, **common)) == [
        "py", "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=16", "--num_machines=2",
        "--machine_rank=1", "--main_process_ip=n0", "--main_process_port=6000", "--mixed_precision=no",
        "--dynamo_backend=no", "-m", "sivae", "train", *train]  # fmt: skip
    one = launcher_command(Launch("accelerate", train, python="py"))
    assert "--multi_gpu" not in one and "--num_processes=1" in one  # accelerate refuses --multi_gpu for one process
    deepspeed = launcher_command(Launch("deepspeed", train, **common))
    assert deepspeed[:4] == ["py", "-u", "-m", "deepspeed.launcher.launch"]
    assert deepspeed[5:] == ["--node_rank=1", "--master_addr=n0", "--master_port=6000", "--no_local_rank",
                             "--module", "sivae", "train", *train]  # fmt: skip
    import base64
    import json

    assert json.loads(base64.urlsafe_b64decode(deepspeed_world_info(2, 8))) == {
        "node0": list(range(8)), "node1": list(range(8))}  # fmt: skip
    assert launcher_command(Launch("local", train, python="py")) == ["py", "-m", "sivae", "train", *train]
    with pytest.raises(LaunchError, match="node-rank must be in"):
        Launch("torchrun", train, nodes=2, node_rank=2)
    with pytest.raises(LaunchError, match="local launcher runs one process"):
        Launch("local", train, procs_per_node=2)


def test_several_nodes_print_each_nodes_command(capsys):
    code = sivae(["launch", "torchrun", str(TINY), "--run-dir", "r", "--nodes", "2", "--gpus-per-node", "4",
                  "--master-addr", "n0", "train.total_kimg=1"])  # fmt: skip
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        argv = shlex.split(line)
        assert f"--node-rank={rank}" in argv and "--master-addr=n0" in argv
        assert argv[-2:] == ["train.total_kimg=1", "train.backend=accelerate"]  # the config's auto, for torchrun


def test_a_bad_config_is_refused_before_any_process_starts(capsys):
    assert sivae(["launch", "deepspeed", str(TINY), "--run-dir", "r", "--gpus-per-node", "2", "train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# sbatch scripts


def test_the_training_script_asks_for_the_job_and_requeues_on_the_warning(capsys, tmp_path):
    code = sivae(["launch", "slurm", str(TINY), "--run-dir", str(tmp_path / "run"), "--nodes", "4",
                  "--gpus-per-node", "8", "--backend", "deepspeed", "--time", "2-00:00:00", "--partition", "gpu",
                  "--account", "vision", "--cpus-per-task", "6", "--warn-seconds", "600", "--dry-run",
                  "train.deepspeed.zero_stage=2"])  # fmt: skip
    assert code == 0
    script = capsys.readouterr().out
    for directive in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=6",
                      "--time=2-00:00:00", "--partition=gpu", "--account=vision", "--requeue",
                      "--signal=B:USR1@600", f"--output={tmp_path / 'run' / 'slurm'}/%x-%j.out"):  # fmt: skip
        assert f"#SBATCH {directive}\n" in script, directive
    assert "trap 'warned=1;" in script and "scancel --signal=USR1 $SLURM_JOB_ID' USR1" in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert "launch prepare" in script  # DeepSpeed's op, built once per node before the ranks start
    assert f"export {RENDEZVOUS_DIR_KEY}={tmp_path / 'run' / 'slurm'}\n" in script  # shared by every node
    train_line = next(line for line in script.splitlines() if line.startswith("srun --kill-on-bad-exit"))
    argv = shlex.split(train_line)
    assert argv[argv.index("task"):argv.index("task") + 2] == ["task", "--"]
    assert argv[-3:] == ["train.deepspeed.zero_stage=2", "train.backend=deepspeed", "&"]
    assert not (tmp_path / "run").exists(), "a dry run writes nothing"
    bash = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert bash.returncode == 0, bash.stderr


def test_a_torchrun_job_runs_one_launcher_per_node_and_a_conflicting_backend_is_refused(capsys, tmp_path):
    args = ["launch", "slurm", str(TINY), "--run-dir", str(tmp_path), "--nodes", "2", "--gpus-per-node", "4",
            "--cpus-per-task", "2", "--dry-run"]  # fmt: skip
    assert sivae([*args, "--backend", "torchrun"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --ntasks-per-node=1\n" in script and "#SBATCH --cpus-per-task=8\n" in script
    assert "launch torchrun" in script and "--slurm" in script
    assert sivae([*args, "--backend", "accelerate", "train.backend=deepspeed"]) == 2
    assert "train.backend=deepspeed but --backend is accelerate" in capsys.readouterr().err
    assert sivae([*args, "--backend", "accelerate", "--time", "90 minutes"]) == 2
    assert "expected HH:MM:SS" in capsys.readouterr().err


def test_the_eval_job_resubmits_itself(capsys, tmp_path):
    code = sivae(["launch", "eval-job", str(tmp_path), "--every", "24hours", "--gpus-per-node", "2", "--dry-run",
                  "--eval-args", "--ood-data data/svhn --metrics fid,ood"])  # fmt: skip
    assert code == 0
    script = capsys.readouterr().out
    assert f"sbatch --begin=now+24hours {tmp_path / 'eval-report' / 'nightly.sbatch'}\n" in script
    step = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    assert step[step.index("eval"):] == ["eval", "nightly", str(tmp_path), "--ood-data", "data/svhn", "--metrics",
                                         "fid,ood"]  # fmt: skip
    assert "#SBATCH --requeue" not in script and "--signal" not in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


# ------------------------------------------------------------------------------------------------
# a real Slurm


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_warned_slurm_job_checkpoints_requeues_and_finishes_like_the_uninterrupted_run(
        slurm, tmp_path, digits16, deepspeed_straight):  # fmt: skip
    run_dir = tmp_path / "run"
    submit = subprocess.run(
        [sys.executable, "-m", "sivae", "launch", "slurm", str(TINY), "--run-dir", str(run_dir), "--nodes", "1",
         "--gpus-per-node", "2", "--backend", "deepspeed", "--cpus-per-task", "1", "--cpu-only", "--time", "00:15:00",
         f"data.path={digits16}", *RUN_8_16, "train.deepspeed.zero_stage=0", "train.precision=fp32"],
        cwd=REPO, env={**slurm.env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.split("Slurm job ")[1].split()[0]

    # mid-run: once the first checkpoint is complete, the warning Slurm sends before the time limit
    first = run_dir / "checkpoints" / "ckpt-000000000064" / "complete"
    wait_for(first.exists, 240, "the first checkpoint")
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    wait_for(lambda: slurm.job_field(job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 300,
             "the job to end")  # fmt: skip

    out = (run_dir / "slurm" / f"sivae-run-{job}.out").read_text()
    err = (run_dir / "slurm" / f"sivae-run-{job}.err").read_text()
    assert (slurm.job_field(job, "JobState"), slurm.job_field(job, "ExitCode")) == ("COMPLETED", "0:0"), out + err
    assert slurm.job_field(job, "Restarts") == "1"
    assert "time-limit warning: checkpointing" in out and "(status 4); requeueing" in out and "start 2" in out
    stopped = err.split("stop signal: checkpoint written at kimg ")[1].split(";")[0]
    assert 0.064 < float(stopped) < IMAGES / 1000, "stopped mid-run"
    assert f"resumed at kimg {stopped} from ckpt-{round(float(stopped) * 1000):012d}" in err

    weights, state = final_state(run_dir)
    straight_weights, straight_state = final_state(deepspeed_straight(0, "fp32")[0])
    assert (state["progress"]["images"], state["progress"]["iteration"]) == (IMAGES, ITERATIONS)
    assert state["progress"] == straight_state["progress"]
    assert max_difference(weights, straight_weights) == 0.0  # exact resume: no tolerance needed
    assert max_difference(state["ema"], straight_state["ema"]) == 0.0


def test_a_real_slurm_job_whose_derived_port_is_taken_meets_at_rank_0s_port(slurm, tmp_path):
    """Two srun tasks of a held job: its derived port is taken before it is released; both tasks export the
    port rank 0 chose and published, the next one."""
    code = "import os; print(os.environ['RANK'], os.environ['MASTER_PORT'])"
    step = [sys.executable, "-m", "sivae", "launch", "task", "--", sys.executable, "-c", code]
    submit = subprocess.run(
        ["sbatch", "--parsable", "--hold", "--nodes=1", "--ntasks=2", "--cpus-per-task=1", f"--chdir={REPO}",
         f"--output={tmp_path}/%j.out", f"--wrap=srun {shlex.join(step)}"],
        env={**slurm.env, RENDEZVOUS_DIR_KEY: str(tmp_path)}, capture_output=True, text=True)  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    derived = master_port(int(job))
    fallback = derived + 1 if derived + 1 < 32768 else 20000
    with taken(derived):
        slurm.run("scontrol", "release", job)
        wait_for(lambda: slurm.job_field(job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 120, "the job")
    out = (tmp_path / f"{job}.out").read_text()
    assert slurm.job_field(job, "JobState") == "COMPLETED", out
    assert sorted(out.split("\n")[-3:-1]) == [f"0 {fallback}", f"1 {fallback}"], out
