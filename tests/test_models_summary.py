"""`sivae models summary`: FLOPs against an analytic count, active parameters against the reference's
published sizes, activation memory against a run on real tensors, and the command itself."""

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sivae.models import ModelConfig, build_model
from sivae.train.summary import measure_iteration, parameter_counts, summarize_level

ROOT = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(max_resolution=32, start_channels=8, max_channels=32, latent_dim=16, mapping_layers=2,
                    encoder_mapping_layers=2, fused_resample_from=16)  # fused and unfused blocks both present


def analytic_iteration_flops(cfg: ModelConfig, lod: int) -> int:
    """FLOPs per image of train.steps.soft_intro_step at level `lod` (blend 1), from the architecture by hand.

    Each convolution or linear layer costs F = 2 * multiply-adds forward, F more for the gradient of its
    input when that input requires one, F more for its weight's gradient when the weight trains.
    Encoder step (decoder frozen): E(x), E(rec.detach()), E(fake.detach()) fully differentiated except the
    FromRGB input (data); generate() forward only (with the second mapping of style mixing); three decodes
    differentiated w.r.t. their inputs only. Decoder step (encoder frozen): four decodes with weight
    gradients, whose first mapping layer has no input gradient (z is detached), plus the mixing mapping;
    two encodes differentiated w.r.t. their inputs (rec and fake require grad).
    """
    ch, lat, side = cfg.channels_at, cfg.latent_dim, 4 * 2**lod
    enc = [(2 * side * side * cfg.image_channels * ch(lod), True, True)]  # (F, has weight, input is data)
    for level in range(lod, -1, -1):
        r, c_in, c_out = 4 * 2**level, ch(level), ch(level - 1)
        fused = r >= cfg.fused_resample_from
        enc += [
            (2 * r * r * c_in * c_in * 9, True, False),  # conv1
            (2 * 2 * c_in * lat, True, False),  # style1 from (mean, std)
            (2 * r * r * c_in * 9, False, False),  # blur (depthwise, fixed)
            ((2 * (r // 2) ** 2 * c_in * c_out * 16) if fused else (2 * r * r * c_in * c_out * 9), True, False),
            (2 * 2 * c_out * lat, True, False),  # style2
        ]
    widths = [lat] * cfg.encoder_mapping_layers + [2 * lat]
    enc += [(2 * a * b, True, False) for a, b in itertools.pairwise(widths)]
    mapping = [2 * lat * lat] * cfg.mapping_layers
    dec = []  # (F, has weight), after the mapping
    for level in range(lod + 1):
        r, c_out, c_in = 4 * 2**level, ch(level), ch(max(level - 1, 0))
        if level > 0:
            fused = r >= cfg.fused_resample_from
            dec += [((2 * (r // 2) ** 2 * c_in * c_out * 16) if fused else (2 * r * r * c_in * c_out * 9), True),
                    (2 * r * r * c_out * 9, False)]  # conv1 (upsampling), blur
        dec += [(2 * lat * 2 * c_out, True), (2 * r * r * c_out * c_out * 9, True), (2 * lat * 2 * c_out, True)]
    dec.append((2 * side * side * ch(lod) * cfg.image_channels, True))  # ToRGB

    e_fwd = sum(f for f, _, _ in enc)
    e_wgrad = sum(f for f, w, _ in enc if w)
    e_igrad_not_data = sum(f for f, _, data in enc if not data)
    m_fwd = sum(mapping)
    d_fwd = sum(f for f, _ in dec) + m_fwd
    d_wgrad = sum(f for f, w in dec if w) + m_fwd
    encoder_step = 3 * (e_fwd + e_wgrad + e_igrad_not_data) + (d_fwd + m_fwd) + 3 * (d_fwd + d_fwd)
    decoder_step = 4 * (d_fwd + d_wgrad + d_fwd - mapping[0]) + (3 * m_fwd - mapping[0]) + 2 * (e_fwd + e_fwd)
    return encoder_step + decoder_step


@pytest.mark.parametrize("lod", range(4))
def test_flop_counter_matches_the_analytic_count(lod):
    assert summarize_level(SMALL, lod).flops_per_image == analytic_iteration_flops(SMALL, lod)


def test_reference_parameter_counts_of_ffhq256():
    # Measured on the reference code: 53.9M in all, encoder 26.8M, decoder 24.0M,
    # z -> w 2.10M, w -> (mu, logvar) 1.05M; active at 4px 12.3M, at 16px 35.4M, at 64px 51.8M;
    # the same design at 1024px 77.0M. The exact totals below are counted by hand from the layer list.
    cfg = ModelConfig()
    counts = parameter_counts(cfg)
    assert counts["total"] == 53_926_805
    with torch.device("meta"):
        model = build_model(cfg)
    z_to_w = sum(p.numel() for p in model.decoder.mapping.parameters())
    w_to_latent = sum(p.numel() for p in model.encoder.to_latent.parameters())
    assert (z_to_w, w_to_latent) == (2_101_248, 1_050_624)
    assert counts["encoder"] - w_to_latent == 26_789_952
    assert counts["decoder"] - z_to_w == 23_984_981
    for lod, millions in ((0, 12.3), (2, 35.4), (4, 51.8)):
        level = summarize_level(cfg, lod)
        assert round((level.encoder_params + level.decoder_params) / 1e6, 1) == millions
    assert round(parameter_counts(ModelConfig(max_resolution=1024, start_channels=64))["total"] / 1e6, 1) == 77.0


def test_activation_memory_on_meta_matches_real_tensors_and_scales_with_the_batch():
    torch.manual_seed(0)
    real = build_model(SMALL).train()
    with torch.device("meta"):
        meta = build_model(SMALL).train()
    on_meta = {b: measure_iteration(meta, 2, b).saved_bytes for b in (1, 2, 3)}
    for batch in (1, 3):
        assert on_meta[batch] == measure_iteration(real, 2, batch).saved_bytes
    b1, b2, b3 = on_meta.values()
    assert b3 - b2 == b2 - b1 > 0
    # at least the input images and the decoded outputs of one step are kept for backward
    assert summarize_level(SMALL, 2).activation_bytes_per_image > 2 * 3 * 16 * 16 * 4


def test_summary_command_prints_every_level(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {max_resolution: 16, start_channels: 4, max_channels: 8, latent_dim: 8, mapping_layers: 1}\n"
        "train: {schedule: [{resolution: 4}, {resolution: 8}, {resolution: 16}]}\n"
    )
    command = [sys.executable, "-m", "sivae", "models", "summary", str(config)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[1] for r in rows] == ["4px", "8px", "16px"]
    flops = [float(r[4]) for r in rows]
    assert flops == sorted(flops) and flops[-1] > 0
    bad = subprocess.run([*command, "model.max_resolution=48"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "max_resolution" in bad.stderr
