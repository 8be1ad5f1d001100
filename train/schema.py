"""The typed schema of training configs (validated by train.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from sivae.core.config import require
from sivae.core.eval_config import EvalConfig
from sivae.core.schedule import LEGACY_FADE_RAMP, FadeRamp, LevelConfig
from sivae.data_pipeline.config import DataConfig
from sivae.models.config import ModelConfig
from sivae.train.backend import PrecisionSetting

# auto: the Accelerate backend when started with several processes (WORLD_SIZE > 1), else single
BackendName = Literal["auto", "single", "accelerate", "deepspeed"]


@dataclass
class ObjectiveConfig:
    """Loss weights. Soft-IntroVAE uses beta_rec, beta_kl, beta_neg, gamma_r and scale;
    IntroVAE uses beta_rec (its beta), beta_kl (weight of the real KL), margin and alpha;
    the VAE (and the VAE warm-up of the others) uses beta_rec and beta_kl."""

    # an objective registered in train.phases (train.steps registers soft-intro, intro and vae); `sivae train`
    # refuses other names before any work
    name: str = "soft-intro"
    reconstruction: Literal["mse", "bce", "chamfer"] = "mse"  # chamfer: point clouds
    beta_rec: float = 1.0
    beta_kl: float = 1.0
    beta_neg: float = 1.0
    gamma_r: float = 1e-8
    # s, the scale of the ELBO inside the exp terms: null means 1 / input_dim (C*H*W) at the model's top
    # resolution for every level (the reference's fixed s); scale_per_resolution uses the current level's
    # input_dim instead.
    scale: float | None = None
    scale_per_resolution: bool = False
    margin: float = 120.0
    alpha: float = 0.25

    def __post_init__(self) -> None:
        for key in ("beta_rec", "beta_kl", "beta_neg", "gamma_r", "alpha", "margin"):
            require(getattr(self, key) >= 0, key, "must be >= 0")
        require(self.scale is None or self.scale > 0, "scale", "must be > 0 (or null for 1/input_dim)")


@dataclass
class OptimizerConfig:
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    # one kernel for all parameters (torch's fused Adam): it skips a non-finite update on the device, so the step
    # never reads a flag back to the host (the for-loop Adam needs one read per phase); the 2D nets gain 5-9%
    fused: bool = True

    def __post_init__(self) -> None:
        require(all(0.0 <= b < 1.0 for b in self.betas), "betas", "must be in [0, 1)")
        require(self.eps > 0, "eps", "must be > 0")


# DeepSpeed config keys the backend derives from the rest of the run config (batch layout, precision,
# clipping, ZeRO stage, the optimizer): `train.deepspeed.extra` may not set them.
DEEPSPEED_OWN_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
    "optimizer", "scheduler", "fp16", "bf16", "bfloat16", "torch_autocast", "zero_optimization.stage",
)


@dataclass
class DeepSpeedConfig:
    """Settings of the DeepSpeed backend (train.backend: deepspeed); see train/deepspeed_backend.py."""

    zero_stage: int = 0  # 0: data parallel; 1: optimizer states partitioned; 2: gradients too
    # Further DeepSpeed config entries, passed through as written (e.g. {zero_optimization: {overlap_comm: true,
    # reduce_bucket_size: 50000000}}); the keys in DEEPSPEED_OWN_KEYS come from the run config and are refused here.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(
            self.zero_stage != 3,
            "zero_stage",
            "ZeRO stage 3 is not supported: it partitions the parameters themselves, while the EMA update, the "
            "frozen network of each phase (called outside its engine) and the snapshots read whole parameters on "
            "every rank; use 2 (optimizer states and gradients partitioned)",
        )
        require(self.zero_stage in (0, 1, 2), "zero_stage", "must be 0, 1 or 2")
        for dotted in DEEPSPEED_OWN_KEYS:
            node: Any = self.extra
            for part in dotted.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            require(node is None, f"extra.{dotted}", "is set by the backend from the run config; remove it here")


@dataclass
class TrainConfig:
    schedule: list[LevelConfig] = field(default_factory=lambda: [LevelConfig(resolution=4)])
    seed: int = 0
    total_kimg: float | None = None  # null: run to the end of the schedule
    vae_warmup_kimg: float = 0.0  # plain-VAE updates of both nets for the first images
    fade_ramp: FadeRamp = "sine"  # the reference's sine ramp, or "linear" (core.schedule)
    per_device_batch: int | None = None  # null: global batch / world size (no accumulation)
    precision: PrecisionSetting = "fp32"  # "auto": bf16 where the device has bf16 matrix units
    ema_halflife_kimg: float = 10.0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    reset_optimizer_on_level: bool = True
    grad_clip: float | None = None
    # step decay: the level's lr is multiplied by lr_decay at each of these kimg (the 2D study's MultiStepLR)
    lr_decay_kimg: list[float] = field(default_factory=list)
    lr_decay: float = 0.1
    max_consecutive_skips: int = 50  # then roll back to the last good checkpoint
    # iterations between the host's looks at the device: runs of skipped updates (the rollback rule) and, with
    # several processes, stop requests (SIGTERM / SIGUSR1) agreed by every rank; each look is one host sync.
    # The cadences (log, checkpoint, ...) look too, so a checkpoint is never written in a run of skips.
    check_every_iterations: int = 10
    max_rollbacks: int = 1  # diverging again after this many rollbacks stops the run
    checkpoint_every_kimg: float = 10.0
    keep_checkpoints: int = 3
    snapshot_every_kimg: float = 50.0
    sample_every_kimg: float = 5.0
    log_every_kimg: float = 1.0
    channels_last: bool = False
    compile: bool = False  # torch.compile every network, level by level (train.performance)
    compile_backend: str = "inductor"  # a torch.compile backend; "aot_eager" / "eager" to debug a graph
    backend: BackendName = "auto"
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def __post_init__(self) -> None:
        require(len(self.schedule) > 0, "schedule", "needs at least one level")
        if any(level.resolution is None for level in self.schedule):
            require(len(self.schedule) == 1, "schedule", "data without a resolution has a single level")
        for prev, cur in zip(self.schedule, self.schedule[1:]):
            require(cur.resolution == 2 * prev.resolution, "schedule", "resolutions must double from level to level")
        require(0 < self.lr_decay <= 1, "lr_decay", "must be in (0, 1]")
        require(all(k > 0 for k in self.lr_decay_kimg), "lr_decay_kimg", "must be positive kimg")
        require(self.total_kimg is None or self.total_kimg > 0, "total_kimg", "must be > 0 (or null)")
        require(self.vae_warmup_kimg >= 0, "vae_warmup_kimg", "must be >= 0")
        require(self.per_device_batch is None or self.per_device_batch > 0, "per_device_batch", "must be > 0")
        require(self.ema_halflife_kimg >= 0, "ema_halflife_kimg", "must be >= 0")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "must be > 0 (or null)")
        require(self.max_consecutive_skips > 0, "max_consecutive_skips", "must be > 0")
        require(self.check_every_iterations > 0, "check_every_iterations", "must be > 0")
        require(self.max_rollbacks >= 0, "max_rollbacks", "must be >= 0")
        require(self.keep_checkpoints > 0, "keep_checkpoints", "must be > 0")
        for key in ("checkpoint_every_kimg", "snapshot_every_kimg", "sample_every_kimg", "log_every_kimg"):
            require(getattr(self, key) > 0, key, "must be > 0")


@dataclass
class RunConfig:
    """A whole training run: what `sivae train CONFIG` reads and writes to the run directory."""

    # defaults that changed: a run directory whose stored config lacks the key ran with the old value,
    # so resuming it with the new default is a conflict that is reported, not a silent change
    CHANGED_DEFAULTS: ClassVar[dict[str, Any]] = {"train.fade_ramp": LEGACY_FADE_RAMP}
    # values of a key that train the same (a resumed run may switch among them): automatic loader workers
    # stream the order of the old default, two workers (sivae.data_pipeline.loader.AUTO_STREAMS)
    SAME_TRAINING: ClassVar[dict[str, tuple[Any, ...]]] = {"data.workers": (2, None)}

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # read back by `sivae eval` from each snapshot

    def __post_init__(self) -> None:
        top = self.train.schedule[-1].resolution
        if self.model.arch != "mlp" and top is not None:
            require(
                top <= self.model.max_resolution,
                "train.schedule",
                f"the last level ({top}px) exceeds model.max_resolution ({self.model.max_resolution}px)",
            )
