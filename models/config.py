"""The `model:` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass, field

from sivae.core.config import require
from sivae.models.registry import ARCHITECTURES

# architectures whose data has no resolution levels (max_resolution does not apply)
FLAT_ARCHITECTURES = ("mlp", "pointcloud")


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass
class ModelConfig:
    arch: str = "style"  # a name in models.registry.ARCHITECTURES
    max_resolution: int = 256  # images are max_resolution x max_resolution (ignored by mlp and pointcloud)
    image_channels: int = 3
    latent_dim: int = 512

    # style: the channels at level l (resolution 4 * 2^l) are min(max_channels, start_channels * 2^(top - l)),
    # so start_channels is the width at the top resolution and the width doubles per level going down.
    start_channels: int = 64
    max_channels: int = 512
    mapping_layers: int = 8  # z -> w
    encoder_mapping_layers: int = 3  # w -> (mu, logvar)
    mapping_lr_mult: float = 0.1
    fused_resample_from: int = 128  # blocks at this resolution and above resample inside the conv (fused)
    style_mixing_prob: float = 0.9
    truncation_psi: float = 0.7  # the default of VAE.sample(truncation_psi=...) callers may use
    truncation_cutoff: int = 8  # truncation applies to the first `cutoff` style slots (2 per level)
    w_avg_beta: float = 0.995  # the tracked average w moves by (1 - beta) toward each prior batch mean
    # fp16 only: conv outputs of blocks at fp16_clamp_from px and above are clamped to +-fp16_clamp
    # (null: never), which keeps the instance-norm statistics of high-resolution layers finite.
    fp16_clamp: float | None = 256.0
    fp16_clamp_from: int = 64

    # standard (IntroVAE's residual nets): channels from the highest resolution down;
    # max_resolution must be 4 * 2^len(channels)
    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 512, 512])

    # translation (models.translation): a class and a content encoder of the standard nets (`channels`), each
    # variational with its own code size and KL weight, one decoder on the concatenation; latent_dim must be
    # class_latent_dim + content_latent_dim
    class_latent_dim: int = 32
    content_latent_dim: int = 8
    class_kl_weight: float = 1.0
    content_kl_weight: float = 1.0

    # pointcloud (the reference's 3D networks, sivae.models.pointcloud): clouds of `points` x 3 coordinates;
    # a PointNet encoder (1x1 convolutions of these widths with batch norm, a max-pool over the points, one
    # hidden layer) and a fully connected decoder (hidden layers of these widths); prior N(0, prior_std^2 I)
    points: int = 2048
    point_encoder_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 256, 512])
    point_encoder_hidden: int = 256
    point_decoder_widths: list[int] = field(default_factory=lambda: [64, 128, 512, 1024])
    prior_std: float = 1.0

    # mlp
    data_dim: int = 2
    hidden: int = 256
    hidden_layers: int = 3

    def __post_init__(self) -> None:
        require(self.arch in ARCHITECTURES, "arch", f"must be one of {' | '.join(map(repr, ARCHITECTURES))}, "
                                                    f"got {self.arch!r}")  # fmt: skip
        require(self.latent_dim > 0, "latent_dim", "must be > 0")
        require(self.image_channels > 0, "image_channels", "must be > 0")
        require(0.0 <= self.style_mixing_prob <= 1.0, "style_mixing_prob", "must be in [0, 1]")
        if self.arch not in FLAT_ARCHITECTURES:
            r = self.max_resolution
            require(4 <= r <= 1024 and _power_of_two(r), "max_resolution", "must be a power of two in [4, 1024]")
        if self.arch == "style":
            require(self.start_channels > 0, "start_channels", "must be > 0")
            require(self.max_channels >= self.start_channels, "max_channels", "must be >= start_channels")
            require(self.mapping_layers >= 1, "mapping_layers", "must be >= 1")
            require(self.encoder_mapping_layers >= 1, "encoder_mapping_layers", "must be >= 1")
            require(self.mapping_lr_mult > 0, "mapping_lr_mult", "must be > 0")
            require(_power_of_two(self.fused_resample_from), "fused_resample_from", "must be a power of two")
            require(0.0 <= self.w_avg_beta <= 1.0, "w_avg_beta", "must be in [0, 1]")
            require(self.truncation_cutoff >= 0, "truncation_cutoff", "must be >= 0")
            require(self.fp16_clamp is None or self.fp16_clamp > 0, "fp16_clamp", "must be > 0 (or null)")
        if self.arch == "translation":
            require(self.class_latent_dim > 0 and self.content_latent_dim > 0, "class_latent_dim",
                    "class_latent_dim and content_latent_dim must be > 0")
            require(self.class_kl_weight >= 0 and self.content_kl_weight >= 0, "class_kl_weight",
                    "class_kl_weight and content_kl_weight must be >= 0")
            require(self.latent_dim == self.class_latent_dim + self.content_latent_dim, "latent_dim",
                    f"must be class_latent_dim + content_latent_dim = "
                    f"{self.class_latent_dim + self.content_latent_dim} (the decoder's input), got {self.latent_dim}")
        if self.arch in ("standard", "translation"):
            require(len(self.channels) >= 1 and all(c > 0 for c in self.channels), "channels", "must be positive")
            expected = 4 * 2 ** len(self.channels)
            require(
                self.max_resolution == expected,
                "channels",
                f"{len(self.channels)} channel entries make {expected}px images, not max_resolution "
                f"{self.max_resolution}px (the residual nets halve the resolution once per entry, down to 4px)",
            )
        if self.arch == "pointcloud":
            require(self.points >= 1, "points", "must be >= 1")
            require(self.prior_std > 0, "prior_std", "must be > 0")
            for key in ("point_encoder_channels", "point_decoder_widths"):
                require(len(getattr(self, key)) >= 1 and all(c > 0 for c in getattr(self, key)), key,
                        "must be a non-empty list of positive widths")
            require(self.point_encoder_hidden > 0, "point_encoder_hidden", "must be > 0")
        if self.arch == "mlp":
            require(self.data_dim > 0 and self.hidden > 0 and self.hidden_layers >= 0, "hidden", "must be positive")

    def channels_at(self, lod: int) -> int:
        """Style nets: feature channels at level `lod` (-1 is the encoder's output below 4px)."""
        return min(self.max_channels, self.start_channels * 2 ** (self.max_lod - lod))

    @property
    def max_lod(self) -> int:
        """The top level: resolution = 4 * 2^lod (0 for the mlp and point clouds, which do not grow)."""
        return 0 if self.arch in FLAT_ARCHITECTURES else self.max_resolution.bit_length() - 3
