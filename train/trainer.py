"""Progressive Soft-IntroVAE training: the loop, resume, EMA, checkpoints, logging.

`Trainer._loop` is the whole loop on one screen: find the schedule position, (re)open the data
stream at a level switch, run `training_step` on the micro-batches of one global batch, update the
EMA, then whatever the cadences ask for (log, sample grids, checkpoint, snapshot). Restoring,
saving and logging are small methods beside it.
"""

from __future__ import annotations

import copy
import dataclasses
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from sivae.core import checkpoint
from sivae.core.config import ConfigError, to_dict
from sivae.core.distributed import DistEnv, all_gather_objects, broadcast_object
from sivae.core.host_memory import keep_freed_memory
from sivae.core.run_dir import RunDir
from sivae.core.schedule import Position, position, schedule_kimg
from sivae.core.snapshot import write_snapshot
from sivae.models import Model, build_model
from sivae.train.accelerate_backend import AccelerateBackend
from sivae.train.backend import Backend, LocalBackend, resolve_precision
from sivae.train.ema import ema_beta, update_ema
from sivae.train.exit_codes import EXIT_OK, EXIT_PREEMPTED
from sivae.train.logger import Logger
from sivae.train.modality import Modality, StreamPlace, make_modality
from sivae.train.performance import compile_networks, start_level_compilation, use_fast_cuda_math
from sivae.train.schema import ObjectiveConfig, RunConfig
from sivae.train.steps import training_step


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint."""

    images: int = 0  # global images trained on
    iteration: int = 0
    level: int = -1  # schedule index of the current level (-1: none yet)
    level_iterations: int = 0  # iterations at the current level: the data stream's position
    rollbacks: int = 0
    skipped_updates: dict[str, int] = field(default_factory=dict)  # per phase of the objective (and warm-up)
    skipped_samples: int = 0  # unreadable samples the data stream replaced
    data_digest: str = ""  # the manifest digest of the data trained on


class TrainingDiverged(RuntimeError):
    pass


def check_data(cfg: RunConfig) -> None:
    """Refuse, before any work, data the run cannot read (the modality of `data.kind` says what that is)."""
    make_modality(cfg, torch.device("cpu")).check()


def make_optimizers(model: Model, cfg: RunConfig) -> dict[str, torch.optim.Optimizer]:
    """An Adam per network of the model."""
    t = cfg.train
    return {
        name: torch.optim.Adam(
            model.network(name).parameters(), lr=t.schedule[0].lr, betas=tuple(t.optimizer.betas),
            eps=t.optimizer.eps, fused=t.optimizer.fused or None,
        )
        for name in model.networks
    }


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, env: DistEnv, accelerator=None, *, console: bool = True,
                 on_iteration: Callable[[Progress], None] | None = None):
        """`console`: print the log lines; `on_iteration`: called after every iteration (progress ticks)."""
        self.cfg, self.env, self.run_dir = cfg, env, RunDir(Path(run_dir))
        self.console, self.on_iteration = console, on_iteration
        t = cfg.train
        t.precision = resolve_precision(t.precision, env.device)  # before config.yaml is written: it says which
        if env.device.type == "cpu":
            keep_freed_memory()  # the step's large blocks come back as fresh pages otherwise (core.host_memory)
        total_kimg = t.total_kimg if t.total_kimg is not None else schedule_kimg(t.schedule)
        self.total_images = round(1000 * total_kimg)
        self.warmup_images = round(1000 * t.vae_warmup_kimg)
        for level in t.schedule:  # refuse an impossible batch layout before any work
            self.layout(level.batch)
        torch.manual_seed(self.noise_seed(rollbacks=0))

        self.modality: Modality = make_modality(cfg, env.device)
        self.model = build_model(cfg.model).to(env.device)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # the EMA's structure is copied before a backend wraps (or, DeepSpeed fp16, converts) the model; its
        # values after, when every rank holds rank 0's initial weights
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizers = make_optimizers(self.model, cfg)
        self.backend = self.make_backend(accelerator)
        self.ema.load_state_dict(self.model.state_dict())
        if env.device.type == "cuda":
            use_fast_cuda_math()
        if t.compile:
            compile_networks(self.model, t.compile_backend)
        self.progress = Progress()
        self.stream = None
        self.stop_requested = False
        self.logger: Logger | None = None

    def make_backend(self, accelerator) -> Backend:
        """The backend the (resolved) train.backend names; `accelerator` is given for "accelerate"."""
        t = self.cfg.train
        options = {"precision": t.precision, "grad_clip": t.grad_clip}
        if t.backend == "deepspeed":
            from sivae.train.deepspeed_backend import DeepSpeedBackend  # imports DeepSpeed: only when used

            micro, accumulation = self.layout(t.schedule[0].batch)
            return DeepSpeedBackend(self.model, self.optimizers, self.env, t.deepspeed, micro_batch=micro,
                                    accumulation=accumulation, **options)  # fmt: skip
        if t.backend == "accelerate":
            return AccelerateBackend(self.model, self.optimizers, accelerator, **options)
        return LocalBackend(self.model, self.optimizers, device=self.env.device, **options)

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        # Rank 0 alone looks at and writes the run directory, then tells the others: a rank that
        # looked itself could see rank 0's fresh config.yaml and take a new run for a resumed one.
        verdict: tuple[bool, str | None] = (False, None)
        if self.env.is_main:
            try:
                verdict = (self.run_dir.prepare(self.cfg), None)
            except ConfigError as exc:
                verdict = (False, str(exc))
        resumed, refusal = broadcast_object(verdict, self.env.world_size)
        if refusal is not None:
            raise ConfigError("", refusal)
        if resumed:
            self.restore_latest()
        if self.env.is_main:
            self.logger = Logger(self.run_dir, self.total_images, self.progress.images, console=self.console)
        previous_handlers = self._install_signal_handlers()
        try:
            return self._loop()
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            if self.logger:
                self.logger.close()

    def _loop(self) -> int:
        t = self.cfg.train
        pos = position(t.schedule, self.progress.images / 1000, t.fade_ramp)  # kept if nothing is left to train
        while self.progress.images < self.total_images:
            pos = position(t.schedule, self.progress.images / 1000, t.fade_ramp)
            if pos.level != self.progress.level:
                self.enter_level(pos)
            if self.stream is None:
                self.open_stream(pos)
            self.backend.set_level(pos.lod, pos.blend)
            self.set_lr(self.lr_at(pos))
            micro_batches = self.next_micro_batches(pos)
            warmup = self.progress.images < self.warmup_images
            stats = training_step(self.backend, micro_batches, self.objective_at(pos), self.loss_scale(pos), warmup)
            update_ema(self.ema, self.model, ema_beta(pos.config.batch, t.ema_halflife_kimg))

            images_before = self.progress.images
            self.progress.images += pos.config.batch
            self.progress.iteration += 1
            self.progress.level_iterations += 1
            if self.logger:
                self.logger.accumulate(stats)
            events = self.events_due(images_before)
            looks = bool(events) or self.progress.iteration % t.check_every_iterations == 0
            if looks and (skips := self.backend.read_skips()) >= t.max_consecutive_skips:
                self.roll_back(skips)
                continue
            self.after_iteration(events, pos)
            if self.on_iteration is not None:
                self.on_iteration(self.progress)
            if self.agree_to_stop(looks):
                self.save_checkpoint()
                self.log(f"stop signal: checkpoint written at kimg {self.progress.images / 1000:.3f}; exiting")
                return EXIT_PREEMPTED
        self.save_checkpoint()
        # the level the last iteration trained at: the image count may already have reached the next
        # level's start, whose new layers have not trained yet
        self.save_snapshot(pos)
        self.log(
            f"done at kimg {self.progress.images / 1000:.3f}. TensorBoard: tensorboard --logdir {self.run_dir.tb}  "
            f"sample grids: {self.run_dir.samples}  snapshots: {self.run_dir.snapshots}"
        )
        return EXIT_OK

    def events_due(self, images_before: int) -> set[str]:
        """The cadences whose interval the last iteration crossed (all of them at the end of the run)."""
        t, now = self.cfg.train, self.progress.images
        every_kimg = {"log": t.log_every_kimg, "samples": t.sample_every_kimg,
                      "checkpoint": t.checkpoint_every_kimg, "snapshot": t.snapshot_every_kimg}  # fmt: skip
        due = set()
        for event, kimg in every_kimg.items():
            every = max(1, round(kimg * 1000))
            if now // every > images_before // every or now >= self.total_images:
                due.add(event)
        return due

    def after_iteration(self, events: set[str], pos: Position) -> None:
        """The cadence events due now (the skip counters were read just before)."""
        now = self.progress.images
        if self.logger and "log" in events:
            self.progress.skipped_updates = dict(self.backend.skipped)
            lr = next(iter(self.optimizers.values())).param_groups[0]["lr"]  # set_lr gives all the same
            self.logger.write_scalars(now, pos, lr, self.progress, self._memory_bytes())
        if "samples" in events:
            self.save_samples(pos)
        if "checkpoint" in events and now < self.total_images:
            self.save_checkpoint()
        if "snapshot" in events and now < self.total_images:
            self.save_snapshot(pos)

    # ---- data and schedule ------------------------------------------------------------------
    def layout(self, global_batch: int) -> tuple[int, int]:
        """(micro-batch per process, accumulation steps) with micro x steps x world = global."""
        world = self.env.world_size
        per_device = self.cfg.train.per_device_batch or global_batch // world
        if per_device < 1 or global_batch % (per_device * world):
            raise ConfigError(
                "train.per_device_batch",
                f"a global batch of {global_batch} cannot be split into per-device batches of {per_device} on "
                f"{world} process(es); choose a per_device_batch such that per_device_batch x {world} divides "
                f"{global_batch}",
            )
        return per_device, global_batch // (per_device * world)

    def enter_level(self, pos: Position) -> None:
        if self.progress.level >= 0 and self.cfg.train.reset_optimizer_on_level:
            self.backend.reset_optimizer()
        self.progress.level, self.progress.level_iterations = pos.level, 0
        self.stream = None
        if self.cfg.train.compile:
            start_level_compilation()
        at = f"{pos.resolution}px, " if pos.resolution is not None else ""
        self.log(f"level {pos.level}: {at}global batch {pos.config.batch}, lr {pos.config.lr:g}")

    def open_stream(self, pos: Position) -> None:
        """The data stream of the level from where the run stands (a level switch, a resume, a rollback)."""
        per_device, accumulation = self.layout(pos.config.batch)
        self.backend.set_layout(per_device, accumulation)
        place = StreamPlace(
            per_device_batch=per_device,
            rank=self.env.rank,
            world_size=self.env.world_size,
            seed=self.cfg.train.seed * 1000 + pos.level + 7919 * self.progress.rollbacks,
            start_batch=self.progress.level_iterations * accumulation,
        )
        stream = self.modality.stream(pos, place)
        digest = self.modality.digest
        if self.progress.data_digest and digest != self.progress.data_digest:
            self.log("note: the data set differs from the one this run started on (digest changed)")
        self.progress.data_digest = digest
        self.stream = iter(stream)

    def next_micro_batches(self, pos: Position) -> list[torch.Tensor]:
        _, accumulation = self.layout(pos.config.batch)
        micro = []
        for _ in range(accumulation):
            batch = next(self.stream)
            self.progress.skipped_samples += batch.skipped
            micro.append(self.modality.model_input(batch, pos))
        return micro

    def lr_at(self, pos: Position) -> float:
        """The level's lr, decayed by lr_decay at each of lr_decay_kimg passed (multiplied step by step, as
        torch's MultiStepLR does, so the 2D study's values are the same floats)."""
        lr, kimg = pos.config.lr, self.progress.images / 1000
        for milestone in self.cfg.train.lr_decay_kimg:
            if kimg >= milestone:
                lr *= self.cfg.train.lr_decay
        return lr

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def objective_at(self, pos: Position) -> ObjectiveConfig:
        beta_neg = pos.config.beta_neg
        return self.cfg.objective if beta_neg is None else dataclasses.replace(self.cfg.objective, beta_neg=beta_neg)

    def loss_scale(self, pos: Position) -> float:
        """The loss scale s (1 / input_dim): fixed at the top resolution by default (as the reference), or per level."""
        objective = self.cfg.objective
        if objective.scale is not None:
            return objective.scale
        return 1.0 / self.model.input_dim(pos.lod if objective.scale_per_resolution else None)

    def noise_seed(self, rollbacks: int) -> int:
        """Per-rank noise streams (prior samples, reparameterisation, style noise); a rollback
        draws different noise, or the same divergence would replay exactly."""
        return self.cfg.train.seed * 1009 + self.env.rank + 104729 * rollbacks

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The trainer's own state; the backend saves it with the networks' and optimizers' (save_checkpoint)."""
        self.backend.read_skips()
        self.progress.skipped_updates = dict(self.backend.skipped)
        return {
            "ema": self.ema.state_dict(),
            "progress": dataclasses.asdict(self.progress),
            "rng": all_gather_objects(checkpoint.capture_rng(), self.env.world_size),  # every rank's
            "world_size": self.env.world_size,
            "config": to_dict(self.cfg),
        }

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])
        self.progress = Progress(**state["progress"])
        self.backend.reset_skips(self.progress.skipped_updates)
        if state["world_size"] == self.env.world_size:
            checkpoint.restore_rng(state["rng"][self.env.rank])
        else:
            self.log(f"world size {state['world_size']} -> {self.env.world_size}: noise streams reseeded")
        self.stream = None

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # collective (the RNG gather): every rank takes part
        self.backend.save_checkpoint(self.run_dir.checkpoints, self.progress.images, state,
                                     self.cfg.train.keep_checkpoints)  # fmt: skip

    def restore_latest(self) -> bool:
        found = self.backend.restore_checkpoint(self.run_dir.checkpoints, warn=self.log)
        if found is None:
            self.log("no readable checkpoint: starting from scratch")
            return False
        name, state = found
        self.load_state_dict(state)
        self.log(f"resumed at kimg {self.progress.images / 1000:.3f} from {name}")
        return True

    def roll_back(self, skips: int) -> None:
        rollbacks = self.progress.rollbacks + 1
        where = f"kimg {self.progress.images / 1000:.3f}"
        if rollbacks > self.cfg.train.max_rollbacks:
            raise TrainingDiverged(
                f"{skips} consecutive non-finite updates at {where}, after {rollbacks - 1} rollback(s): the run "
                f"diverges. Lower the learning rate or beta_neg, or train in fp32/bf16; checkpoints in "
                f"{self.run_dir.checkpoints}"
            )
        self.log(f"{skips} consecutive non-finite updates at {where}: rolling back to the last checkpoint")
        if not self.restore_latest():
            raise TrainingDiverged(f"{skips} consecutive non-finite updates at {where}, before any checkpoint")
        self.progress.rollbacks = rollbacks
        torch.manual_seed(self.noise_seed(rollbacks))

    def save_snapshot(self, pos: Position) -> None:
        if self.env.is_main:
            write_snapshot(
                self.run_dir.snapshots,
                images=self.progress.images,
                config=to_dict(self.cfg),
                lod=pos.lod,
                blend=pos.blend,
                resolution=pos.resolution,
                networks={name: self.ema.network(name).state_dict() for name in self.ema.networks},
            )

    @torch.no_grad()
    def save_samples(self, pos: Position) -> None:
        """What the modality shows of the EMA model (sample grids, plots). Runs on its own RNG state, so
        that sampling never changes the training's random stream."""
        if not self.env.is_main:
            return
        devices = [self.env.device] if self.env.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.train.seed)
            self.modality.write_samples(self.ema, pos, self.progress.images, self.logger)

    # ---- preemption -------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict:
        """SIGTERM and SIGUSR1 (Slurm's warning before the time limit) ask for a checkpoint and exit."""

        def request_stop(signum, _frame):
            self.stop_requested = True

        return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGUSR1)}

    def agree_to_stop(self, looks: bool) -> bool:
        """Every rank stops at the same iteration if any rank got a stop signal: one process looks every
        iteration, several agree on the iterations the host looks at the device (a collective)."""
        if self.env.world_size == 1:
            return self.stop_requested
        if not looks:
            return False
        flag = torch.tensor([int(self.stop_requested)], device=self.env.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    # ---- small helpers ----------------------------------------------------------------------
    def _memory_bytes(self) -> int:
        if self.env.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.env.device)
        return psutil.Process().memory_info().rss

    def log(self, message: str) -> None:
        if self.env.is_main and self.console:
            print(f"[sivae train] {message}", file=sys.stderr, flush=True)
