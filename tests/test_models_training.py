"""Every architecture under the training steps: a short Soft-IntroVAE run learns; bf16/fp16 autocast,
channels_last and torch.compile work."""

import pytest
import torch

from sivae.models import ModelConfig, build_model
from sivae.train.backend import LocalBackend
from sivae.train.schema import ObjectiveConfig
from sivae.train.steps import training_step

ARCHS = {
    "style": ModelConfig(max_resolution=16, start_channels=16, max_channels=32, latent_dim=16, mapping_layers=2),
    "standard": ModelConfig(arch="standard", max_resolution=16, channels=[16, 32], latent_dim=16),
    "mlp": ModelConfig(arch="mlp", data_dim=3 * 16 * 16, latent_dim=16, hidden=128, hidden_layers=2),
}
# Adam as each architecture's reference trains it: equalised-lr style nets with betas (0, 0.99)
OPTIMIZER = {"style": (5e-3, (0.0, 0.99)), "standard": (1e-3, (0.9, 0.999)), "mlp": (1e-3, (0.9, 0.999))}
OBJECTIVE = ObjectiveConfig(beta_rec=1.0, beta_kl=1.0, beta_neg=256.0, gamma_r=1e-8)


def disks(n: int, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Coloured disks of random size on a dark background, in [-1, 1]: data with structure to learn."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    colour = torch.rand(n, 3, 1, 1, generator=g) * 1.2 - 0.6
    radius = torch.rand(n, 1, 1, generator=g) * 0.4 + 0.3
    disk = ((xx**2 + yy**2) < radius**2).float().unsqueeze(1)
    return disk * colour + (1 - disk) * -0.8


def batch_for(arch: str, n: int = 16) -> torch.Tensor:
    x = disks(n)
    return x.flatten(1) if arch == "mlp" else x


@pytest.mark.parametrize("arch", ARCHS)
def test_short_soft_intro_training_at_16px_lowers_the_losses(arch):
    torch.manual_seed(0)
    model = build_model(ARCHS[arch])
    lr, betas = OPTIMIZER[arch]
    opts = {n: torch.optim.Adam(getattr(model, n).parameters(), lr=lr, betas=betas) for n in ("encoder", "decoder")}
    backend = LocalBackend(model, opts)
    backend.set_level(None, 1.0)
    x = batch_for(arch)
    history = [training_step(backend, x, OBJECTIVE, 1.0 / 768, warmup=False) for _ in range(40)]
    for term in ("rec", "loss_encoder", "loss_decoder"):
        first = sum(h[term].item() for h in history[:5])
        last = sum(h[term].item() for h in history[-5:])
        assert last < 0.8 * first, f"{arch}: {term} went from {first / 5:.4g} to {last / 5:.4g}"


def forward(model, x, autocast_dtype=None):
    """(mu, logvar, decoded mu) in eval mode, deterministic (no per-pixel noise)."""
    ctx = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        mu, logvar = model.encode(x)
        kwargs = {"noise": False} if hasattr(model.decoder, "supports_truncation") else {}
        return mu.float(), logvar.float(), model.decoder(mu, None, 1.0, False, **kwargs).float()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast_matches_fp32(arch):
    # Stated tolerance: 5% relative (L2) error on mu, logvar and the decoded image. bf16 keeps 8 bits
    # of mantissa (relative rounding 2^-9 = 0.2% per operation); measured here: 0.3-0.9% on mu and
    # logvar for every architecture, 0.3% (standard, mlp) and 2.4% (style) on the decoded image, whose
    # small initial values (ToRGB gain 0.03) make its relative error the largest.
    torch.manual_seed(0)
    model = build_model(ARCHS[arch]).eval()
    x = batch_for(arch, 8)
    reference = forward(model, x)
    mixed = forward(model, x, torch.bfloat16)
    for ref, got in zip(reference, mixed):
        assert torch.isfinite(got).all()
        assert relative_error(got, ref) < 0.05


def test_fp16_autocast_runs_and_the_clamp_keeps_high_resolution_activations_finite():
    cfg = ModelConfig(max_resolution=64, start_channels=8, max_channels=16, latent_dim=16, mapping_layers=2)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = disks(4, side=64)
    reference = forward(model, x)
    half = forward(model, x, torch.float16)
    assert all(relative_error(got, ref) < 0.05 for ref, got in zip(reference, half))

    # inflate the first convolution at 64px so its fp16 outputs exceed 65504 (fp16's largest value); its
    # weights stay within fp16's range (the equalised-lr scale multiplies the input), at about +-60000
    with torch.no_grad():
        model.encoder.blocks[4].conv1.weight.mul_(1e5).clamp_(-6e4, 6e4)
    assert torch.isfinite(forward(model, x, torch.float16)[0]).all()  # clamped at +-256
    unclamped = build_model(ModelConfig(**{**vars(cfg), "fp16_clamp": None})).eval()
    unclamped.load_state_dict(model.state_dict())
    assert not torch.isfinite(forward(unclamped, x, torch.float16)[0]).all()
    assert torch.isfinite(forward(unclamped, x)[0]).all()  # fp32 itself is fine: the clamp is fp16's


@pytest.mark.parametrize("arch", ["style", "standard"])
def test_channels_last_gives_the_same_function_and_trains(arch):
    torch.manual_seed(0)
    model = build_model(ARCHS[arch]).eval()
    x = batch_for(arch, 4)
    reference = forward(model, x)
    model = model.to(memory_format=torch.channels_last)
    got = forward(model, x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(got, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    model.train()
    opts = {n: torch.optim.Adam(getattr(model, n).parameters(), lr=1e-4) for n in ("encoder", "decoder")}
    stats = training_step(LocalBackend(model, opts), x.contiguous(memory_format=torch.channels_last), OBJECTIVE,
                          1.0 / 768, warmup=False)
    assert all(torch.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_compiles_without_graph_breaks_at_a_fixed_level(arch):
    # fullgraph=True raises on any graph break; the eager backend skips code generation (quick on CPU)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(ARCHS[arch]).train()
    encoder = torch.compile(model.encoder, fullgraph=True, backend="eager")
    decoder = torch.compile(model.decoder, fullgraph=True, backend="eager")
    x = batch_for(arch, 4)
    lod = model.max_lod
    for blend in (0.5, 1.0):  # a fade-in and the stable phase of the level
        mu, logvar = encoder(x, lod, blend)
        fake = decoder(torch.randn_like(mu), lod, blend, True)  # prior samples: style mixing, w_avg update
        rec = decoder(mu, lod, blend, False)
        (rec.float().square().mean() + fake.float().square().mean() + logvar.float().mean()).backward()
    model.eval()  # deterministic: the compiled graph computes what the eager modules compute
    torch.testing.assert_close(encoder(x, lod, 0.5), model.encoder(x, lod, 0.5))
