"""Gradient-flow and freeze rules of the training steps, on the MLP model."""

import copy

import pytest
import torch

from sivae.models.mlp import mlp_vae
from sivae.train.backend import LocalBackend
from sivae.train.schema import ObjectiveConfig
from sivae.train.steps import intro_step, soft_intro_step, training_step, vae_step


class GradientLog:
    """Records, per phase, which parameters received a gradient (post-accumulate hooks)."""

    def __init__(self, backend: LocalBackend):
        self.backend = backend
        self.got_grad: dict[str, set[str]] = {}
        self.grad_norm: dict[str, float] = {}
        for name, p in backend.model.named_parameters():
            p.register_post_accumulate_grad_hook(self._hook(name))

    def _hook(self, name):
        def hook(p):
            phase = self.backend.phase
            self.got_grad.setdefault(phase, set()).add(name)
            self.grad_norm[f"{phase}:{name}"] = float(p.grad.norm())

        return hook


def make_backend(seed=0, lr=1e-2):
    torch.manual_seed(seed)
    model = mlp_vae(data_dim=2, latent_dim=2, hidden=16, hidden_layers=1)
    opts = {n: torch.optim.SGD(getattr(model, n).parameters(), lr=lr) for n in ("encoder", "decoder")}
    return model, LocalBackend(model, opts)


def names(model, prefix):
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


CFG = ObjectiveConfig(name="soft-intro", beta_rec=0.2, beta_kl=0.3, beta_neg=0.9, gamma_r=1e-8)
X = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("step", [soft_intro_step, intro_step])
def test_encoder_phase_touches_only_the_encoder(step):
    model, backend = make_backend()
    log = GradientLog(backend)
    step(backend, X, CFG, 0.5)
    assert log.got_grad["encoder"] == names(model, "encoder.")
    assert log.got_grad["decoder"] == names(model, "decoder.")
    # after each update the gradients are cleared, so nothing leaks into the next phase
    assert all(p.grad is None for p in model.parameters())


def test_encoder_step_leaves_decoder_unchanged_and_without_gradient():
    model, backend = make_backend()
    dec_before = snapshot(model.decoder)
    enc_before = snapshot(model.encoder)
    original_step = backend.step
    seen = {}

    def step(net):
        if net == "encoder":
            seen["decoder_grads"] = [p.grad for p in model.decoder.parameters()]
            ok = original_step(net)
            seen["decoder_changed"] = changed(dec_before, model.decoder)
            seen["encoder_changed"] = changed(enc_before, model.encoder)
            return ok
        return original_step(net)

    backend.step = step
    soft_intro_step(backend, X, CFG, 0.5)
    assert all(g is None for g in seen["decoder_grads"])
    assert not any(seen["decoder_changed"])
    assert all(seen["encoder_changed"])


def test_decoder_step_gets_gradient_through_frozen_encoder_only():
    # With beta_rec = gamma_r = 0 the decoder loss is s * 0.5 * beta_kl * (KL(E(rec)) + KL(E(fake))):
    # its only path to the decoder's parameters runs through the (frozen) encoder.
    cfg = ObjectiveConfig(name="soft-intro", beta_rec=0.0, beta_kl=1.0, beta_neg=0.9, gamma_r=0.0)
    model, backend = make_backend()
    log = GradientLog(backend)
    original_step = backend.step
    seen = {}

    def step(net):
        if net != "decoder":
            return original_step(net)
        seen["enc_grads"] = [p.grad for p in model.encoder.parameters()]
        enc_before, dec_before = snapshot(model.encoder), snapshot(model.decoder)
        ok = original_step(net)
        seen["enc_changed"] = changed(enc_before, model.encoder)
        seen["dec_changed"] = changed(dec_before, model.decoder)
        return ok

    backend.step = step
    soft_intro_step(backend, X, cfg, 0.5)
    assert log.got_grad["decoder"] == names(model, "decoder.")
    assert all(log.grad_norm[f"decoder:{n}"] > 0 for n in names(model, "decoder."))
    assert all(g is None for g in seen["enc_grads"]), "the frozen encoder gets no gradient"
    assert not any(seen["enc_changed"]), "the frozen encoder must not move in the decoder step"
    assert all(seen["dec_changed"])


def test_vae_step_trains_both():
    model, backend = make_backend()
    log = GradientLog(backend)
    enc, dec = snapshot(model.encoder), snapshot(model.decoder)
    vae_step(backend, X, CFG)
    assert log.got_grad["vae"] == names(model, "")
    assert all(changed(enc, model.encoder)) and all(changed(dec, model.decoder))


def test_warmup_selects_vae_step():
    _, backend = make_backend()
    stats = training_step(backend, X, CFG, 0.5, warmup=True)
    assert "loss_vae" in stats and "loss_encoder" not in stats
    stats = training_step(backend, X, CFG, 0.5, warmup=False)
    assert {"loss_encoder", "loss_decoder", "exp_elbo_rec", "exp_elbo_fake", "diff_kl"} <= set(stats)


def test_non_finite_loss_is_skipped_and_counted():
    model, backend = make_backend()
    before = snapshot(model)
    x = X.clone()
    x[0, 0] = float("nan")
    soft_intro_step(backend, x, CFG, 0.5)
    assert not any(changed(before, model))
    assert backend.read_skips() == 2  # the encoder's and the decoder's updates, in a row
    assert backend.skipped["encoder"] == 1 and backend.skipped["decoder"] == 1
    soft_intro_step(backend, x, CFG, 0.5)
    assert backend.read_skips() == 4, "a run of skips counts on across reads"
    soft_intro_step(backend, X, CFG, 0.5)
    assert backend.read_skips() == 4, "the run that reached into this window, in full"
    soft_intro_step(backend, X, CFG, 0.5)
    assert backend.read_skips() == 0 and backend.skipped == {"encoder": 2, "decoder": 2}


def test_non_finite_gradient_is_skipped():
    model, backend = make_backend()
    before = snapshot(model)
    # a finite loss (0) whose gradient is not: d sqrt(u)/du is infinite at u = 0
    loss = torch.sqrt(model.encoder.net[0].weight * 0.0).sum()
    assert torch.isfinite(loss)
    with backend.train_only("encoder"):
        backend.backward("encoder", loss)
        applied = backend.step("encoder")
    assert not applied and backend.read_skips() == 1 and backend.skipped["encoder"] == 1
    assert not any(changed(before, model))


def test_short_soft_intro_training_lowers_reconstruction():
    model, backend = make_backend(lr=0.0)
    opts = {n: torch.optim.Adam(getattr(model, n).parameters(), lr=2e-3) for n in ("encoder", "decoder")}
    backend.optimizers = opts
    gen = torch.Generator().manual_seed(3)

    def data():
        return torch.randn(128, 2, generator=gen) * torch.tensor([2.0, 0.3])

    first = [training_step(backend, data(), CFG, 0.5, warmup=False)["rec"].item() for _ in range(5)]
    for _ in range(300):
        training_step(backend, data(), CFG, 0.5, warmup=False)
    last = [training_step(backend, data(), CFG, 0.5, warmup=False)["rec"].item() for _ in range(5)]
    assert sum(last) < 0.5 * sum(first)


@pytest.mark.parametrize("objective", ["soft-intro", "intro", "vae"])
def test_micro_batches_give_the_update_of_the_whole_batch(monkeypatch, objective):
    # The losses are batch means and micro-batch losses are averaged, so 4 micro-batches of 8
    # must update the nets as one batch of 32 does. The prior samples of a global batch do not
    # depend on its split; the reparameterisation noise does, so it is switched off (z = mu).
    monkeypatch.setattr("sivae.train.steps.reparameterize", lambda mu, logvar: mu)
    cfg = ObjectiveConfig(name=objective, beta_rec=0.2, beta_kl=0.3, beta_neg=0.9, gamma_r=1e-8, margin=2.0)

    def run(batch):
        model, backend = make_backend(seed=0)
        torch.manual_seed(5)
        stats = training_step(backend, batch, cfg, 0.5)
        return [p.detach().clone() for p in model.parameters()], stats

    (whole, stats_whole), (split, stats_split) = run(X), run(list(X.split(8)))
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # (intro: the hinge on the batch-mean KL is linear while every micro-batch stays below the margin)
    if objective == "soft-intro":  # the exp terms are means too
        torch.testing.assert_close(stats_whole["exp_elbo_fake"], stats_split["exp_elbo_fake"])


def test_fused_adam_skips_a_non_finite_update_on_the_device(monkeypatch):
    """Fused Adam takes the finiteness as found_inf: parameters, moments and step counts stay as they
    were, with no host read of the flag (bool() of a tensor fails in this test)."""
    torch.manual_seed(0)
    model = mlp_vae(data_dim=2, latent_dim=2, hidden=16, hidden_layers=1)
    opts = {n: torch.optim.Adam(getattr(model, n).parameters(), lr=1e-2, fused=True) for n in ("encoder", "decoder")}
    backend = LocalBackend(model, opts)
    soft_intro_step(backend, X, CFG, 0.5)  # moments and step counts exist now
    state = {n: copy.deepcopy(o.state_dict()) for n, o in opts.items()}
    before = snapshot(model)

    def no_host_read(self):
        raise AssertionError("a host read in the update")

    x = X.clone()
    x[0, 0] = float("nan")
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "__bool__", no_host_read)
        soft_intro_step(backend, x, CFG, 0.5)
    assert not any(changed(before, model))
    for name, opt in opts.items():
        for key, saved in state[name]["state"].items():
            now = opt.state_dict()["state"][key]
            assert all(torch.equal(saved[k], now[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert backend.read_skips() == 2
    soft_intro_step(backend, X, CFG, 0.5)
    assert all(changed(before, model))
    backend.read_skips()
    assert backend.skipped == {"encoder": 1, "decoder": 1}


def test_per_sample_models_are_told_apart_by_batch_normalisation():
    from sivae.models import build_model
    from sivae.models.config import ModelConfig

    assert build_model(ModelConfig(max_resolution=16, start_channels=4, max_channels=8, latent_dim=4)).per_sample
    assert not build_model(ModelConfig(arch="standard", max_resolution=16, latent_dim=4,
                                       channels=[4, 8])).per_sample  # fmt: skip


def test_joint_calls_of_a_per_sample_model_give_the_separate_calls_update(monkeypatch):
    # The style model is per sample, so its phases send the reconstructions and the prior samples through
    # the encoder (and their codes through the decoder) in one call: the losses and the update must be
    # those of the separate calls, up to float rounding. Random numbers are taken out of the comparison:
    # z = mu, no per-pixel noise, no style mixing (the joint call draws them in another order).
    from sivae.models import build_model
    from sivae.models.config import ModelConfig
    from sivae.models.style_layers import NoiseInjection

    monkeypatch.setattr("sivae.train.steps.reparameterize", lambda mu, logvar: mu)
    monkeypatch.setattr(NoiseInjection, "forward", lambda self, x, noise: x)
    cfg = ModelConfig(max_resolution=16, start_channels=4, max_channels=8, latent_dim=4, mapping_layers=2,
                      style_mixing_prob=0.0)  # fmt: skip
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1

    def run(joint: bool):
        torch.manual_seed(0)
        model = build_model(cfg).train()
        initial = [p.detach().clone() for p in model.parameters()]
        if not joint:
            model.per_sample = False  # as a model with batch statistics is run
        # SGD: the update is the gradient (Adam would turn float-rounding-sized gradients into whole steps)
        opts = {n: torch.optim.SGD(getattr(model, n).parameters(), lr=0.1) for n in model.networks}
        backend = LocalBackend(model, opts)
        backend.set_level(2, 1.0)
        calls = {"encode": 0, "decode": 0}
        def counted(name, call):
            def run_counted(t):
                calls[name] += 1
                return call(t)

            return run_counted

        for name in calls:
            monkeypatch.setattr(backend, name, counted(name, getattr(backend, name)))
        torch.manual_seed(5)
        stats = training_step(backend, x, CFG, 0.5)
        return [p.detach() - p0 for p, p0 in zip(model.parameters(), initial)], stats, calls

    (joint, stats_joint, calls_joint), (separate, stats_separate, calls_separate) = run(True), run(False)
    assert calls_joint == {"encode": 3, "decode": 4} and calls_separate == {"encode": 5, "decode": 6}
    for key in stats_separate:
        torch.testing.assert_close(stats_joint[key], stats_separate[key], rtol=1e-5, atol=1e-7)
    # the updates (the gradients times the lr) agree to float rounding: as a whole, and tensor by tensor
    # against the largest update (a gradient that is zero in exact arithmetic, such as that of the bias
    # before the first instance norm on the constant input, is rounding noise either way)
    diff = torch.cat([(a - b).flatten() for a, b in zip(joint, separate)])
    assert diff.norm() / torch.cat([b.flatten() for b in separate]).norm() < 1e-5
    largest = max(float(b.norm()) for b in separate)
    assert all(float((a - b).norm()) < 1e-4 * largest for a, b in zip(joint, separate))
