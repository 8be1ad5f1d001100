"""The style-based encoder/decoder: shapes at every level, the fade-in invariant, which parameters
learn at a level, determinism, the tracked average w, truncation and style mixing."""

from pathlib import Path

import pytest
import torch

from sivae.core.config import load_config
from sivae.models import ModelConfig, build_model
from sivae.models.progressive import downsample, resolution_of, upsample
from sivae.train.backend import Backend
from sivae.train.schema import ObjectiveConfig, RunConfig
from sivae.train.steps import soft_intro_step

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# narrow but complete: 1024px (9 levels), fused resampling from 128px, fp16 clamp from 64px
NARROW_1024 = ModelConfig(max_resolution=1024, start_channels=2, max_channels=8, latent_dim=8, mapping_layers=2)
NARROW_128 = ModelConfig(max_resolution=128, start_channels=4, max_channels=16, latent_dim=8, mapping_layers=2)


def randomized(cfg: ModelConfig, seed: int = 0):
    """A model whose zero- or one-initialised parameters (biases, noise weights, the constant) are random too,
    so that no path of the network is trivially silent."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if (p == 0).all() or (p == 1).all():
                p.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def ffhq1024():
    cfg = load_config(RunConfig, CONFIGS / "ffhq1024.yaml").model
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("lod", range(9))
def test_ffhq1024_shapes_and_finiteness_at_every_level(ffhq1024, lod):
    batch = 2 if lod <= 5 else 1
    side = resolution_of(lod)
    x = torch.rand(batch, 3, side, side) * 2 - 1
    with torch.no_grad():
        mu, logvar = ffhq1024.encode(x, lod, 1.0)
        image = ffhq1024.decode(mu, lod, 1.0)
    assert mu.shape == logvar.shape == (batch, 512)
    assert image.shape == (batch, 3, side, side) == (batch, *ffhq1024.data_shape_at(lod))
    assert all(torch.isfinite(t).all() for t in (mu, logvar, image))


def test_top_level_is_the_default():
    model = randomized(NARROW_128).eval()
    assert model.max_lod == 5 and model.data_shape == (3, 128, 128) and model.input_dim() == 3 * 128 * 128
    x = torch.randn(2, 3, 128, 128)
    torch.testing.assert_close(model.encode(x), model.encode(x, 5, 1.0))
    z = torch.randn(2, 8)
    torch.testing.assert_close(model.decoder(z, noise=False), model.decoder(z, 5, 1.0, noise=False))
    with pytest.raises(ValueError, match="level 5 encodes images"):
        model.encode(torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("lod", range(1, 9))
def test_blend_zero_reproduces_the_previous_level(lod):
    model = randomized(NARROW_1024, seed=lod).eval()
    side = resolution_of(lod)
    x = torch.randn(2, 3, side, side)
    z = torch.randn(2, 8)
    with torch.no_grad():
        # encoder: the new level at blend 0 sees x as the previous level sees downsample(x)
        assert all(torch.equal(a, b) for a, b in zip(model.encode(x, lod, 0.0), model.encode(downsample(x), lod - 1)))
        # decoder: the new level at blend 0 shows the previous level's image, upsampled
        assert torch.equal(model.decoder(z, lod, 0.0, noise=False), upsample(model.decoder(z, lod - 1, noise=False)))
        # and blend does change the function in between
        assert not torch.equal(model.decoder(z, lod, 0.5, noise=False), model.decoder(z, lod, 0.0, noise=False))


class RecordingBackend(Backend):
    """Plain backward (no optimizer): remembers which parameters received a non-zero, finite gradient."""

    def __init__(self, model):
        super().__init__(model, torch.device("cpu"))
        self.got_grad, self.bad_grad = set(), set()

    def backward(self, net, loss):
        loss.backward()

    def step(self, net):
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                (self.got_grad if torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 else self.bad_grad).add(name)
                p.grad = None
        return True


def expected_active(lod: int, blend: float) -> set[str]:
    """By hand: the blocks up to `lod`, the RGB adapters of `lod` (and of lod - 1 while fading in), the mappings."""
    rgb = {lod, lod - 1} if blend < 1 and lod > 0 else {lod}
    prefixes = (
        [f"encoder.blocks.{level}." for level in range(lod + 1)]
        + [f"decoder.blocks.{level}." for level in range(lod + 1)]
        + [f"encoder.from_rgb.{level}." for level in rgb]
        + [f"decoder.to_rgb.{level}." for level in rgb]
        + ["encoder.to_latent.", "decoder.mapping.", "decoder.const"]
    )
    return {n for n, _ in randomized(NARROW_128).named_parameters() if n.startswith(tuple(prefixes))}


@pytest.mark.parametrize("lod, blend", [(0, 1.0), (2, 1.0), (3, 0.4), (5, 1.0), (5, 0.7)])
def test_gradients_reach_exactly_the_active_parameters(lod, blend):
    model = randomized(NARROW_128).train()
    backend = RecordingBackend(model)
    backend.set_level(lod, blend)
    side = resolution_of(lod)
    cfg = ObjectiveConfig(beta_rec=1.0, beta_kl=1.0, beta_neg=1.0, gamma_r=1.0)
    soft_intro_step(backend, torch.randn(4, 3, side, side), cfg, scale=1.0 / (3 * side * side))
    assert not backend.bad_grad
    assert backend.got_grad == expected_active(lod, blend)
    # what each network declares unused (data parallelism reduces only the rest) is exactly what got no gradient
    for net in ("encoder", "decoder"):
        declared = {f"{net}.{n}" for n in model.network(net).parameters_unused_at(lod, blend)}
        every = {n for n, _ in model.named_parameters() if n.startswith(f"{net}.")}
        assert declared == every - backend.got_grad, net


def test_same_seed_same_output_in_training_mode():
    # training mode: per-pixel noise, style mixing and the reparameterisation all draw random numbers
    def run(seed):
        torch.manual_seed(0)
        model = build_model(NARROW_128).train()
        torch.manual_seed(seed)
        x = torch.randn(3, 3, 32, 32)
        mu, _ = model.encode(x, 3, 0.6)
        return model.decode(mu, 3, 0.6, mixing=True), model.decoder.w_avg.clone()

    (a, wa), (b, wb), (c, _) = run(1), run(1), run(2)
    assert torch.equal(a, b) and torch.equal(wa, wb)
    assert not torch.equal(a, c)


def test_average_w_tracks_prior_samples_in_training_mode_only():
    torch.manual_seed(0)
    model = build_model(NARROW_128)
    decoder = model.decoder
    z = torch.randn(16, 8)
    decoder.eval()
    decoder(z, 2, mixing=True)
    assert torch.equal(decoder.w_avg, torch.zeros(8))
    decoder.train()
    decoder(z, 2, mixing=False)  # reconstructions do not move it
    assert torch.equal(decoder.w_avg, torch.zeros(8))
    decoder(z, 2, mixing=True)
    expected = (1 - NARROW_128.w_avg_beta) * decoder.mapping(z).mean(dim=0)
    torch.testing.assert_close(decoder.w_avg, expected.detach())
    assert "decoder.w_avg" in model.state_dict()  # checkpointed with the decoder


def test_truncation_pulls_samples_to_the_average_w():
    cfg = ModelConfig(**{**vars(NARROW_128), "truncation_cutoff": 100})  # every slot truncated
    model = randomized(cfg).eval()
    with torch.no_grad():
        model.decoder.w_avg.normal_()
        z = torch.randn(3, 8)
        at_average = model.decoder(z, 3, truncation_psi=0.0, noise=False)
        # psi = 0: every sample is the image of the average w
        assert torch.allclose(at_average, at_average[:1].expand_as(at_average), atol=1e-6)
        # psi = 1: no truncation
        torch.testing.assert_close(model.decoder(z, 3, truncation_psi=1.0, noise=False),
                                   model.decoder(z, 3, noise=False))
        assert model.sample(2, 3, truncation_psi=0.7).shape == (2, 3, 32, 32)


def test_style_mixing_swaps_a_suffix_of_slots_for_prior_samples_only():
    cfg = ModelConfig(**{**vars(NARROW_128), "style_mixing_prob": 1.0})
    decoder = randomized(cfg).decoder.train()
    z = torch.randn(64, 8)
    with torch.no_grad():
        w = decoder.mapping(z)
        styles = decoder.styles(z, 3, mixing=True, truncation_psi=None)  # 8 slots
        own = (styles - w.unsqueeze(1)).abs().amax(dim=2) == 0  # (batch, slot): slot still holds the sample's w
        # each sample keeps its own w in a prefix of at least one slot and a second w after it
        for row in own:
            kept = int(row.sum())
            assert kept >= 1 and row[:kept].all() and not row[kept:].any()
        # the mixed-in suffix holds one w (of another prior sample) in all its slots
        suffixes = [styles[i, int(own[i].sum()):] for i in range(64)]
        assert all((s - s[:1]).abs().max() == 0 for s in suffixes if len(s))
        assert sum(len(s) > 0 for s in suffixes) > 40  # cut-offs are uniform in [1, 8]: most samples mix
        plain = decoder.styles(z, 3, mixing=False, truncation_psi=None)
        assert torch.equal(plain, w.unsqueeze(1).expand(-1, 8, -1))


def test_encoder_and_decoder_hold_their_own_parameters():
    model = build_model(NARROW_128)
    names = [n for n, _ in model.named_parameters()]
    assert all(n.startswith(("encoder.", "decoder.")) for n in names)
    assert any(n.startswith("encoder.to_latent.") for n in names)
    assert any(n.startswith("decoder.mapping.") for n in names) and "decoder.const" in names
