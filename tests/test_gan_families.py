"""Generator families (dcgan, sngan, vae): one interface, their own upsampling and objective, one Ray Train path.

Plain torch for shapes, losses and steps; one tiny Ray Train run per new
family (1 epoch, ngf = ndf = 8, 2 workers, 64 px) whose checkpoints the
generation stage turns into a fake table.
"""

from __future__ import annotations

import contextlib
import json

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from cxr_ray import storage
from cxr_ray.checkpoint import CheckpointError, save_state
from cxr_ray.config import ConfigError
from cxr_ray.data import schema
from cxr_ray.filenames import GAN_CONFIG_FILE, GAN_LOSSES_FILE, STATE_FILE
from cxr_ray.gan_state import build_gan_state, discriminator_kwargs, generator_from_state, load_gan_state
from cxr_ray.models import dcgan, sngan, vae
from cxr_ray.models.generators import GENERATOR_FAMILIES, build_family, fresh_generator, generator_class
from cxr_ray.train.gan import GanConfig, claim_run, make_optimizers, sample, train_epoch, train_gan
from cxr_ray.train.gan_steps import RealFakeDiscriminator, StepModels, hinge_d_loss, hinge_g_loss, vae_step

NZ = 16
TINY = dict(batch_size=16, nz=NZ, ngf=8, ndf=8, num_workers=2, max_failures=1, seed=3, epochs=1)
# Computed with the code before families existed (commit 23fb4df): DCGAN run names must not move.
DCGAN_NAMES = {
    (64, "NORMAL"): "dcgan-normal-64px-705473b9fad8",
    (128, "all"): "dcgan-all-128px-f62c6873fff5",
}


def quiet(_message: str) -> None:
    pass


def labels_for(num_classes: int, n: int) -> torch.Tensor | None:
    return torch.arange(n) % num_classes if num_classes else None


def step_models(family: str, num_classes: int = 0, image_size: int = 64) -> StepModels:
    """One worker's networks without DDP, wired as cxr_ray.train.gan wires them."""
    cfg = GanConfig(data="t", family=family, image_size=image_size, nz=NZ, ngf=8, ndf=8, lr=1e-3,
                    class_name="all" if num_classes else "NORMAL", conditional=bool(num_classes))
    generator, critic = build_family(family, image_size, NZ, 8, 8, num_classes)
    optimizer_g, optimizer_d = make_optimizers(cfg, generator, critic)
    wrapped = critic if family == "vae" else RealFakeDiscriminator(critic)
    return StepModels(generator, wrapped, critic, optimizer_g, optimizer_d)


# ---------------------------------------------------------------- networks (no Ray)


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("image_size", [64, 128])
@pytest.mark.parametrize("family", GENERATOR_FAMILIES)
def test_every_family_has_the_dcgan_interface(family, image_size, conditional):
    torch.manual_seed(0)
    num_classes = 2 if conditional else 0
    generator, critic = build_family(family, image_size, NZ, 8, 8, num_classes)
    assert type(generator) is generator_class(family)
    assert (generator.nz, generator.nc, generator.image_size, generator.num_classes) == (NZ, 1, image_size, num_classes)
    labels = labels_for(num_classes, 4)
    images = generator(torch.randn(4, NZ), labels)
    assert images.shape == (4, 1, image_size, image_size)
    assert images.abs().max() <= 1.0 and images.std() > 0
    flat = sample(generator, torch.randn(4, NZ, 1, 1), labels)  # the DCGAN's (N, nz, 1, 1) noise too
    assert flat.shape == (4, 1, image_size, image_size) and flat.abs().max() <= 1.0
    out = critic(images.detach(), labels)
    if family == "vae":
        mu, logvar = out
        assert mu.shape == logvar.shape == (4, NZ)
    else:
        assert out.shape == (4,)
    with pytest.raises(ValueError, match="conditional" if conditional else "unconditional"):
        generator(torch.randn(2, NZ), None if conditional else torch.tensor([0, 1]))


def test_families_differ_in_how_they_upsample_and_sngan_normalises_its_critic():
    kinds = {f: build_family(f, 64, NZ, 8, 8, 0) for f in GENERATOR_FAMILIES}

    def upsamples(module: nn.Module) -> set:
        return {(m.mode, m.align_corners) for m in module.modules() if isinstance(m, nn.Upsample)}

    def has(module: nn.Module, kind: type) -> bool:
        return any(isinstance(m, kind) for m in module.modules())

    assert has(kinds["dcgan"][0], nn.ConvTranspose2d) and not upsamples(kinds["dcgan"][0])
    assert upsamples(kinds["sngan"][0]) == {("nearest", None)} and not has(kinds["sngan"][0], nn.ConvTranspose2d)
    assert upsamples(kinds["vae"][0]) == {("bilinear", False)} and not has(kinds["vae"][0], nn.ConvTranspose2d)

    critic = kinds["sngan"][1]
    weighted = [m for m in critic.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert weighted and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in weighted)
    assert not has(critic, nn.BatchNorm2d)
    # Spectral norm: every layer's largest singular value is ~1 (power iteration, so approximately).
    for m in weighted:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert abs(float(sigma) - 1.0) < 0.1
    assert {m.negative_slope for m in critic.modules() if isinstance(m, nn.LeakyReLU)} == {sngan.LEAKY_SLOPE}


# ---------------------------------------------------------------- objectives and steps (no Ray)


def test_hinge_losses_on_hand_made_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2] -> mean 1.
    assert hinge_d_loss(real, fake).item() == pytest.approx(5 / 6 + 1)
    assert hinge_d_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -5.0])).item() == 0.0  # margins met
    assert hinge_g_loss(torch.tensor([1.0, -3.0])).item() == pytest.approx(1.0)  # -mean D(G(z))


def test_vae_step_lowers_its_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    models = step_models("vae")
    ramp = torch.linspace(-0.9, 0.9, 64)
    batch = torch.stack([ramp[None, :] * s + ramp[:, None] * (1 - s) for s in torch.linspace(0, 1, 8)])[:, None]
    amp = contextlib.nullcontext
    losses = []
    for _ in range(10):
        out = vae_step(models, batch, None, NZ, amp)
        assert out["d_real"] == 0.0 and out["d_fake"] == 0.0
        losses.append(float(out["loss_g"] + vae.BETA * out["loss_d"]))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) / 2 < 0.5 * sum(losses[:2]) / 2, losses


@pytest.mark.parametrize("family", GENERATOR_FAMILIES)
def test_a_conditional_epoch_trains_both_networks_of_every_family(family):
    torch.manual_seed(0)
    models = step_models(family, num_classes=2)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (models.generator, models.discriminator)]
    images = torch.randint(0, 256, (12, 1, 64, 64), dtype=torch.uint8)
    out = train_epoch(models, images, labels_for(2, 12), 6, 2, NZ, torch.Generator().manual_seed(0),
                      contextlib.nullcontext, family)
    assert set(out) == {"loss_d", "loss_g", "d_real", "d_fake"}
    assert all(torch.isfinite(torch.tensor(list(out.values()))))
    for net, old in zip((models.generator, models.discriminator), before):
        assert any(not torch.equal(old[k], v) for k, v in net.state_dict().items()), (family, type(net).__name__)


# ---------------------------------------------------------------- config and checkpoints (no Ray)


def test_family_is_validated_and_named_and_dcgan_names_do_not_move(tmp_path):
    with pytest.raises(ConfigError) as error:
        GanConfig(data="t", family="bogus")
    assert "\n" not in str(error.value) and "family must be one of dcgan, sngan, vae" in str(error.value)
    for (size, cls), name in DCGAN_NAMES.items():
        kwargs = dict(data="t", image_size=size, class_name=cls, conditional=cls == "all")
        if size == 128:
            kwargs.update(ngf=8, ndf=8, seed=3)
        assert GanConfig(**kwargs).run_name() == name
        assert GanConfig(**kwargs, family="dcgan").identity() == GanConfig(**kwargs).identity()
        assert "family" not in GanConfig(**kwargs).identity() and "family" not in GanConfig(**kwargs).stage_config()
    sn, ae = GanConfig(data="t", image_size=64, family="sngan"), GanConfig(data="t", image_size=64, family="vae")
    assert sn.run_name().startswith("sngan-normal-64px-") and ae.run_name().startswith("vae-normal-64px-")
    assert sn.identity()["family"] == "sngan" and sn.stage_config()["family"] == "sngan"
    assert len({sn.run_name()[6:], ae.run_name()[4:], DCGAN_NAMES[(64, "NORMAL")][6:]}) == 3  # distinct hashes

    # A run marker written before families (no "family") is a DCGAN's: it resumes as dcgan, refuses another family.
    run_uri = str(tmp_path / "old-run")
    dc = GanConfig(data="t", image_size=64, name="old-run")
    storage.write_json_atomic(storage.join(run_uri, GAN_CONFIG_FILE), dc.identity())
    claim_run(dc, run_uri, None)
    with pytest.raises(ConfigError, match="different family"):
        claim_run(GanConfig(data="t", image_size=64, name="old-run", family="sngan"), run_uri, None)


def tiny_state(family: str, **cfg_kwargs) -> dict:
    torch.manual_seed(0)
    cfg = GanConfig(data="t", image_size=64, nz=NZ, ngf=8, ndf=8, family=family, **cfg_kwargs)
    generator, critic = build_family(family, 64, NZ, 8, 8, cfg.num_classes)
    return build_gan_state(cfg, 1, generator, critic, None, None, [{"epoch": 1}])


@pytest.mark.parametrize("family", GENERATOR_FAMILIES)
def test_states_record_their_family_and_rebuild_its_networks(family, tmp_path):
    state = tiny_state(family, class_name="all", conditional=True)
    assert state["family"] == family
    save_state(state, str(tmp_path / STATE_FILE))
    loaded = load_gan_state(str(tmp_path))  # weights_only=True
    generator = generator_from_state(loaded)
    assert type(generator) is generator_class(family) and not generator.training and generator.num_classes == 2
    expected = state["generator"]["model_state"]
    assert all(torch.equal(expected[k], v) for k, v in generator.state_dict().items())
    # The critic too: its recorded kwargs rebuild it (the VAE's encoder needs nz).
    critic = build_family(family, 64, NZ, 8, 8, 2)[1]
    assert type(critic)(**loaded["discriminator"]["model_kwargs"]).load_state_dict(loaded["discriminator"]["model_state"])
    # gan-quality's untrained ceiling row is the same family, freshly initialised.
    from cxr_ray.gan_quality import untrained_generator

    assert type(untrained_generator(loaded, seed=0)) is generator_class(family)


def test_a_state_without_family_is_a_dcgan_and_unknown_families_are_refused(tmp_path):
    old = tiny_state("dcgan")
    del old["family"]  # as written before families existed
    save_state(old, str(tmp_path / "old.pt"))
    assert type(generator_from_state(load_gan_state(str(tmp_path / "old.pt")))) is dcgan.Generator
    # A DCGAN from before families is rebuilt exactly as fresh_generator would init it.
    torch.manual_seed(1)
    reference = dcgan.Generator(**old["generator"]["model_kwargs"])
    reference.apply(dcgan.weights_init)
    torch.manual_seed(1)
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(),
                                                 fresh_generator("dcgan", old["generator"]["model_kwargs"]).state_dict().values()))
    with pytest.raises(CheckpointError, match="unknown family 'gan9000'"):
        generator_from_state({**old, "family": "gan9000"})
    assert "nz" in discriminator_kwargs(GanConfig(data="t", family="vae")) and "nz" not in discriminator_kwargs(GanConfig(data="t"))


def test_cli_takes_the_family_and_refuses_an_unknown_one():
    from cxr_ray.cli.train_gan_cmd import EPILOG, train_gan as train_gan_cmd
    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(name="train-gan", epilog=EPILOG)(train_gan_cmd)
    app.command(name="unused")(lambda: None)
    help_text = CliRunner().invoke(app, ["train-gan", "--help"]).output
    assert "--family" in help_text and "sngan" in help_text
    result = CliRunner().invoke(app, ["train-gan", "t", "--family", "bogus"])
    assert result.exit_code == 2 and "family must be one of dcgan, sngan, vae" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- Ray Train + generation


@pytest.mark.slow  # CXR_RAY_SLOW=1 (the default run keeps every family's epoch without Ray)
def test_sngan_and_vae_train_on_ray_and_their_checkpoints_generate_fakes(sample64, tmp_path):
    from cxr_ray.generate import GenerateConfig, run_generate

    runs = {}
    for family, class_name in (("sngan", "PNEUMONIA"), ("vae", "NORMAL")):
        cfg = GanConfig(data=sample64, storage=str(tmp_path / "runs"), family=family, class_name=class_name, **TINY)
        summary = train_gan(cfg, log=quiet)
        assert summary["run"].startswith(f"{family}-{class_name.lower()}-64px-") and summary["family"] == family
        run = tmp_path / "runs" / summary["run"]
        history = json.loads((run / GAN_LOSSES_FILE).read_text())["epochs"]
        entry = history[-1]
        assert all(torch.isfinite(torch.tensor([entry[k] for k in ("loss_d", "loss_g", "d_real", "d_fake")])))
        for net in ("g_digests", "d_digests"):  # DDP kept both replicas (spectral-norm buffers included) identical
            for kind in ("params", "buffers"):
                assert len(set(entry[net][kind])) == 1, (family, net, kind, entry[net][kind])
        state = torch.load(storage.join(summary["checkpoint"], STATE_FILE), weights_only=True)
        assert state["family"] == family and state["config"]["family"] == family
        assert json.loads((run / GAN_CONFIG_FILE).read_text())["family"] == family
        runs[class_name] = str(run)

    dest = str(tmp_path / "fakes")
    gen_cfg = GenerateConfig(generators=(runs["NORMAL"], runs["PNEUMONIA"]), dest=dest, train_seeds=(0, 8),
                             test_seeds=(1_000_000, 1_000_004), val_fraction=0.25, batch_size=8)
    run_generate(gen_cfg, log=quiet)
    fs, path = storage.resolve(storage.join(storage.published(dest, None), schema.IMAGES_DIR), None)
    rows = pq.read_table(path, filesystem=fs).select(["class_name", "generator_run", "image"]).to_pylist()
    assert len(rows) == 2 * 12
    assert {(r["class_name"], r["generator_run"]) for r in rows} == {
        ("NORMAL", runs["NORMAL"].rsplit("/", 1)[-1]), ("PNEUMONIA", runs["PNEUMONIA"].rsplit("/", 1)[-1])
    }
    assert all(len(r["image"]) == 64 * 64 for r in rows)
    assert len({r["image"] for r in rows}) == len(rows)  # every seed its own fake
