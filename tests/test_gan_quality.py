"""GAN quality metric: the distances are right, and they order real, perturbed and generated images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxr_ray import gan_quality as q
from cxr_ray.checkpoint import save_state
from cxr_ray.filenames import GAN_CONFIG_FILE, SAMPLES_DIR, STATE_FILE
from cxr_ray.gan_state import build_gan_state
from cxr_ray.models.dcgan import build_dcgan
from cxr_ray.train.gan import GanConfig
from conftest import SAMPLE


@pytest.fixture(scope="module")
def encoder_file(sample64, tmp_path_factory) -> str:
    """A briefly trained encoder, cached like the CLI caches it."""
    uri = str(tmp_path_factory.mktemp("encoder") / "encoder.pt")
    save_state(q.train_encoder(sample64, epochs=2, log=lambda m: None), uri)
    return uri


# ---------------------------------------------------------------- the formulas


def test_frechet_matches_the_closed_form_and_a_direct_matrix_square_root():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = np.diag([1.0, 2.0, 3.0, 4.0, 5.0]), np.diag([2.0, 2.0, 1.0, 9.0, 0.5])
    # Commuting (diagonal) covariances: tr((S1 S2)^½) = Σ sqrt(s1_i s2_i).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(np.diag(s1)) - np.sqrt(np.diag(s2))) ** 2)
    assert q.frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)

    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    c1, c2 = a @ a.T + np.eye(6), b @ b.T + 0.1 * np.eye(6)
    eigenvalues = np.linalg.eigvals(c1 @ c2)  # positive reals for a product of SPD matrices
    direct = np.trace(c1) + np.trace(c2) - 2 * np.sum(np.sqrt(eigenvalues.real))
    assert q.frechet_from_stats(np.zeros(6), c1, np.zeros(6), c2) == pytest.approx(direct, rel=1e-8)
    assert q.frechet_from_stats(np.zeros(6), c1, np.zeros(6), c1) == pytest.approx(0.0, abs=1e-8)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    same = [q.polynomial_mmd2_unbiased(rng.normal(size=(50, 8)), rng.normal(size=(50, 8))) for _ in range(200)]
    shifted = q.polynomial_mmd2_unbiased(rng.normal(size=(50, 8)), rng.normal(0.5, 1.0, size=(50, 8)))
    standard_error = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 4 * standard_error  # unbiased: negative values occur, the mean is ~0
    assert min(same) < 0 < shifted
    kid, spread, subset = q.kernel_inception_distance(rng.normal(size=(40, 8)), rng.normal(1.0, 1.0, size=(40, 8)))
    assert subset == 20 and kid > 0 and spread > 0


# ---------------------------------------------------------------- on real X-rays


def perturbed(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    noise = sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def test_metric_orders_real_perturbed_and_untrained_generator_images(sample64, encoder_file):
    encoder = q.encoder_from_state(torch.load(encoder_file, weights_only=True))
    reference, _ = q.real_images(sample64, "test", "NORMAL", None)
    train_images, train_labels = q.real_images(sample64, "train", "NORMAL", None)
    real = q.subsample(train_images, train_labels, len(reference), seed=0)[0]
    generator, discriminator = build_dcgan(64, nz=16, ngf=8, ndf=8)
    cfg = GanConfig(data=sample64, image_size=64, nz=16, ngf=8, ndf=8)
    untrained = q.fake_images(q.untrained_generator(build_gan_state(cfg, 0, generator, discriminator, None, None, []), 0), len(reference), None, 0)

    features = q.encode(encoder, reference)
    assert features.shape == (len(reference), 128)
    rows = {name: q.compare(name, features, q.encode(encoder, images), seed=0) for name, images in [
        ("real", real), ("noise 40", perturbed(real, 40)), ("noise 60", perturbed(real, 60)), ("untrained", untrained),
    ]}
    fd = {name: row["fd"] for name, row in rows.items()}
    kid = {name: row["kid"] for name, row in rows.items()}
    # Gaussian pixel noise of sigma 40 and 60 (of 255): visible damage; sigma 10 is within what 30 images resolve.
    assert 5 * fd["real"] < fd["noise 40"] < fd["noise 60"], fd
    assert 5 * fd["real"] < fd["untrained"], fd
    assert kid["real"] < kid["noise 40"] < kid["noise 60"], kid
    assert kid["real"] + 3 * rows["untrained"]["kid_std"] < kid["untrained"], rows["untrained"]


def test_evaluate_generator_reports_rows_sizes_and_feature_dimension(sample64, encoder_file, tmp_path):
    generator, discriminator = build_dcgan(64, nz=16, ngf=8, ndf=8)
    cfg = GanConfig(data=sample64, image_size=64, nz=16, ngf=8, ndf=8, class_name="PNEUMONIA")
    checkpoint = tmp_path / STATE_FILE
    save_state(build_gan_state(cfg, 5, generator, discriminator, None, None, []), str(checkpoint))
    out = tmp_path / "quality.json"

    from test_gan import cli_app

    result = CliRunner().invoke(
        cli_app(), ["gan-quality", str(checkpoint), "--encoder", encoder_file, "--n-fake", "24", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["class_name"] == "PNEUMONIA" and report["epoch"] == 5 and report["split"] == "test"
    assert report["feature"]["dim"] == 128 and report["n_fake"] == 24
    assert [r["comparison"].split(" vs ")[0] for r in report["rows"]] == [
        "real test half", "real train", "generator (epoch 5)", "untrained generator",
    ]
    assert report["rows"][0]["n_reference"] == report["n_real"] // 2
    assert all(r["n_reference"] == report["n_real"] for r in report["rows"][1:])
    assert report["notes"], "n_real < 128 features: the rank-deficiency note must be there"
    assert "128-d" in result.output and "KID" in result.output


def test_inception_features_from_a_local_weights_file(sample64, encoder_file, tmp_path):
    from torchvision.models import inception_v3

    weights = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict(), weights)
    generator, discriminator = build_dcgan(64, nz=16, ngf=8, ndf=8)
    cfg = GanConfig(data=sample64, image_size=64, nz=16, ngf=8, ndf=8)
    checkpoint = tmp_path / STATE_FILE
    save_state(build_gan_state(cfg, 1, generator, discriminator, None, None, []), str(checkpoint))

    report = q.evaluate_generator(
        str(checkpoint), split="val", n_fake=6, encoder_uri=encoder_file, inception_weights=str(weights),
        baselines=False, log=lambda m: None,
    )
    inception = report["inception"]
    assert inception["dim"] == 2048 and len(inception["rows"]) == 1
    assert np.isfinite(inception["rows"][0]["fd"]) and inception["rows"][0]["n_other"] == 6


# ---------------------------------------------------------------- the curve over training


def test_grid_tiles_give_back_the_grid_images_exactly():
    from cxr_ray.gan_curve import grid_tiles
    from cxr_ray.pixels import to_uint8
    from cxr_ray.train.gan import grid_png

    images = torch.rand(64, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tiles = grid_tiles(grid_png(images), 64)
    assert tiles.shape == (64, 64, 64) and tiles.dtype == np.uint8
    assert np.array_equal(tiles, to_uint8(images)[:, 0].numpy())


def test_quality_curve_reads_every_epoch_grid_and_ranks_them(sample64, encoder_file, tmp_path):
    from cxr_ray import storage
    from cxr_ray.gan_curve import quality_curve
    from cxr_ray.report.plots import quality_curves
    from cxr_ray.train.gan import grid_png

    run = tmp_path / "dcgan-normal-64px-test"
    (run / SAMPLES_DIR).mkdir(parents=True)
    storage.write_json_atomic(str(run / GAN_CONFIG_FILE), {"data": sample64, "class_name": "NORMAL", "image_size": 64})
    train, _ = q.real_images(sample64, "train", "NORMAL", None)
    real = train[:64].float().div(127.5).sub(1).unsqueeze(1)
    noise = torch.rand(64, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    # Epoch 0: noise (the untrained end); epoch 1: real X-rays (what a perfect generator would draw).
    (run / SAMPLES_DIR / "epoch_000.png").write_bytes(grid_png(noise))
    (run / SAMPLES_DIR / "epoch_001.png").write_bytes(grid_png(real))
    (run / SAMPLES_DIR / "notes.txt").write_text("not a grid")

    result = quality_curve(str(run), split="test", encoder_uri=encoder_file, log=lambda m: None)
    assert [r["epoch"] for r in result["rows"]] == [0, 1] and result["n_fake"] == 64
    noise_row, real_row = result["rows"]
    assert real_row["kid"] + 3 * noise_row["kid_std"] < noise_row["kid"], result["rows"]
    assert quality_curves([result], "t")[:8] == b"\x89PNG\r\n\x1a\n"
