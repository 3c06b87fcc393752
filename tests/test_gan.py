"""DCGAN on Ray Train: DDP replicas stay identical, a killed worker resumes, re-runs continue, S3 storage, CLI.

Ray Train runs here are tiny (ngf = ndf = 8, batch 16, 64 px, ~100 real
X-rays per class) and cost ~40 s each on a 2-core machine.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from cxr_ray import storage
from cxr_ray.checkpoint import CheckpointError, save_state
from cxr_ray.config import ConfigError, from_dict
from cxr_ray.filenames import GAN_CONFIG_FILE, GAN_LOSSES_FILE, GAN_SUMMARY_FILE, SAMPLES_DIR, STATE_FILE
from cxr_ray.gan_state import (
    GAN_FORMAT,
    GRID_SIDE,
    build_gan_state,
    generator_from_state,
    load_gan_state,
    resolve_gan_state_uri,
)
from cxr_ray.models.dcgan import build_dcgan
from cxr_ray.train.gan import GanConfig, RealFakeDiscriminator, frozen, sample, tensor_digest, train_gan
from conftest import SAMPLE, boto3_client

TINY = dict(batch_size=16, nz=16, ngf=8, ndf=8, num_workers=2, max_failures=1, seed=3)
GRID_PX = GRID_SIDE * 64 + (GRID_SIDE + 1) * 2  # make_grid: 2 px padding around every tile


def quiet(_message: str) -> None:
    pass


# ---------------------------------------------------------------- no Ray


def test_sample_grids_tile_as_torchvision_make_grid_does_without_importing_it():
    """cxr_ray.grids draws the per-epoch grids (torchvision's import costs every GAN worker ~3 s); same pixels."""
    from torchvision.utils import make_grid

    from cxr_ray import grids

    images = torch.rand(13, 1, 9, 7, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2  # some outside [-1, 1]
    for nrow in (8, 13, 20):
        expected = make_grid(images, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
        expected = (expected[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        assert (grids.tile(images, nrow) == expected).all()
    assert Image.open(io.BytesIO(grids.png(images, 8))).size == (8 * 9 + 2, 2 * 11 + 2)
    code = "import sys, cxr_ray.models, cxr_ray.train.gan, cxr_ray.grids; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # building the cnn or a generator never imports torchvision


def test_config_refuses_bad_values_and_names_runs_stably():
    with pytest.raises(ConfigError, match="class_name"):
        GanConfig(data="t", class_name="COVID")
    with pytest.raises(ConfigError, match="conditional"):
        GanConfig(data="t", class_name="all")
    with pytest.raises(ConfigError, match="conditional"):
        GanConfig(data="t", class_name="NORMAL", conditional=True)
    with pytest.raises(ConfigError, match="image_size"):
        GanConfig(data="t", image_size=224)
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(GanConfig, {"data": "t", "learning_rate": 1e-3})
    base = GanConfig(data="t", image_size=64)
    assert base.run_name() == GanConfig(data="t", image_size=64).run_name()
    assert base.run_name().startswith("dcgan-normal-64px-")
    # More epochs or workers continue the same run; another architecture is another run.
    assert GanConfig(data="t", image_size=64, epochs=99, num_workers=8).run_name() == base.run_name()
    assert GanConfig(data="t", image_size=64, ngf=32).run_name() != base.run_name()
    assert GanConfig(data="t", image_size=64, name="mine").run_name() == "mine"


def test_real_and_fake_get_separate_batchnorm_batches_in_one_forward():
    torch.manual_seed(0)
    _, discriminator = build_dcgan(64, nz=16, ngf=8, ndf=8)
    real, fake = torch.randn(6, 1, 64, 64), torch.randn(6, 1, 64, 64) * 0.1
    state = {k: v.clone() for k, v in discriminator.state_dict().items()}
    real_logits, _ = RealFakeDiscriminator(discriminator)(real, fake, None, None)
    discriminator.load_state_dict(state)
    alone = discriminator(real)
    discriminator.load_state_dict(state)
    concatenated = discriminator(torch.cat([real, fake]))[:6]
    assert torch.allclose(real_logits, alone, atol=1e-6)  # as if D saw only the real batch
    assert not torch.allclose(real_logits, concatenated, atol=1e-3)  # shared statistics would differ


def test_generator_step_gives_discriminator_no_gradient():
    generator, discriminator = build_dcgan(64, nz=16, ngf=8, ndf=8)
    with frozen(discriminator):
        assert not any(p.requires_grad for p in discriminator.parameters())
        discriminator(generator(torch.randn(4, 16))).sum().backward()
    assert all(p.grad is None for p in discriminator.parameters())
    assert all(p.grad is not None for p in generator.parameters())
    assert all(p.requires_grad for p in discriminator.parameters())


def test_sampling_uses_running_stats_and_leaves_the_training_state_alone():
    generator, _ = build_dcgan(64, nz=16, ngf=8, ndf=8)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    noise = torch.randn(8, 16)
    first = sample(generator, noise)
    assert generator.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())  # BN buffers untouched
    # Eval mode: an image does not depend on the rest of its batch.
    assert torch.allclose(sample(generator, noise[:3]), first[:3], atol=1e-6)


# ---------------------------------------------------------------- the checkpoint format (no Ray)


def tiny_state(epoch: int = 2, **cfg_kwargs) -> dict:
    torch.manual_seed(0)
    cfg = GanConfig(data="t", image_size=64, nz=16, ngf=8, ndf=8, **cfg_kwargs)
    generator, discriminator = build_dcgan(64, nz=16, ngf=8, ndf=8, num_classes=cfg.num_classes)
    return build_gan_state(cfg, epoch, generator, discriminator, None, None, [{"epoch": epoch}])


def test_gan_state_round_trips_with_the_tag_and_keys_old_checkpoints_have(tmp_path):
    assert GAN_FORMAT == "cxr_ray.dcgan/1"  # the tag of every checkpoint written so far
    state = tiny_state(class_name="all", conditional=True)
    assert set(state) == {
        "format", "family", "epoch", "config", "class_names", "generator", "discriminator",
        "optimizer_g", "optimizer_d", "history", "fixed_noise", "fixed_labels",
    }
    uri = str(tmp_path / STATE_FILE)
    save_state(state, uri)
    loaded = load_gan_state(uri)
    assert loaded["epoch"] == 2 and loaded["config"]["class_name"] == "all"
    assert torch.equal(loaded["fixed_noise"], state["fixed_noise"])
    generator = generator_from_state(loaded)
    assert not generator.training and generator.num_classes == 2
    expected = state["generator"]["model_state"]
    assert all(torch.equal(expected[k], v) for k, v in generator.state_dict().items())


def test_gan_state_is_found_from_a_run_folder_a_checkpoint_folder_or_the_file(tmp_path):
    run = tmp_path / "dcgan-normal"
    old, new = run / "checkpoint_2026-01-01_00-00-00.000000", run / "checkpoint_2026-01-02_00-00-00.000000"
    for folder, epoch in ((old, 1), (new, 2)):
        save_state(tiny_state(epoch), str(folder / STATE_FILE))
    assert resolve_gan_state_uri(str(new / STATE_FILE), None) == str(new / STATE_FILE)  # the file
    assert resolve_gan_state_uri(str(old), None) == str(old / STATE_FILE)  # a checkpoint folder
    assert load_gan_state(str(run))["epoch"] == 2  # a run folder without a summary: its newest checkpoint
    storage.write_json_atomic(str(run / GAN_SUMMARY_FILE), {"checkpoint": str(old)})
    assert load_gan_state(str(run))["epoch"] == 1  # with a summary: the checkpoint it names


def test_gan_state_readers_refuse_other_files_and_name_them(tmp_path):
    other = tmp_path / "classifier" / STATE_FILE
    save_state({"kind": "classifier", "model_state": {}}, str(other))
    with pytest.raises(CheckpointError, match=f"{other}: not a DCGAN checkpoint"):
        load_gan_state(str(other.parent))
    with pytest.raises(CheckpointError, match="not a DCGAN checkpoint"):
        generator_from_state({"format": "something/else"})
    with pytest.raises(CheckpointError, match="nowhere: no such GAN run"):
        load_gan_state(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: no GAN checkpoint found"):
        load_gan_state(str(tmp_path / "empty"))
    broken = {k: v for k, v in tiny_state().items() if k != "config"}
    save_state(broken, str(tmp_path / "broken.pt"))
    with pytest.raises(CheckpointError, match="broken.pt: GAN checkpoint lacks config"):
        load_gan_state(str(tmp_path / "broken.pt"))


# ---------------------------------------------------------------- Ray Train


def read_png(path) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(io.BytesIO(f.read()))


def assert_replicas_identical(history: list[dict]) -> None:
    for entry in history:
        for net in ("g_digests", "d_digests"):
            for kind in ("params", "buffers"):
                digests = entry[net][kind]
                assert len(digests) == 2 and digests[0] == digests[1], (entry["epoch"], net, kind, digests)


@pytest.mark.slow  # CXR_RAY_SLOW=1 (the default run keeps the DCGAN trained on S3 by the S3 study job)
def test_two_workers_stay_identical_survive_a_killed_worker_and_resume(sample64, tmp_path):
    marker = tmp_path / "killed-once"
    cfg = GanConfig(
        data=sample64, storage=str(tmp_path / "runs"), class_name="NORMAL", epochs=3,
        inject_failure={"epoch": 1, "rank": 1, "marker": str(marker)}, **TINY,
    )
    summary = train_gan(cfg, log=quiet)
    run = tmp_path / "runs" / summary["run"]

    assert marker.exists(), "the failure hook did not fire"
    assert summary["epochs"] == 3 and summary["num_workers"] == 2
    history = json.loads((run / GAN_LOSSES_FILE).read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1, 2, 3]
    # Epoch 1 ran in the first attempt; the restarted group resumed from its checkpoint, not from scratch.
    assert [e["attempt_start_epoch"] for e in history] == [0, 1, 1]
    assert all(torch.isfinite(torch.tensor([e["loss_d"], e["loss_g"]])).all() for e in history)
    assert_replicas_identical(history)
    assert len({e["g_digests"]["params"][0] for e in history}) == 3  # and they did train

    # The run folder is enough: its summary names the checkpoint (loaded weights_only).
    assert resolve_gan_state_uri(str(run), None) == storage.join(summary["checkpoint"], STATE_FILE)
    state = load_gan_state(str(run))
    assert state["epoch"] == 3 and state["optimizer_g"]["state"] and state["optimizer_d"]["state"]
    generator = generator_from_state(state)
    assert tensor_digest(iter(generator.named_parameters())) == history[-1]["g_digests"]["params"][0]
    for epoch in range(4):  # epoch_000 is the untrained generator
        assert read_png(run / SAMPLES_DIR / f"epoch_{epoch:03d}.png").size == (GRID_PX, GRID_PX)
    assert json.loads((run / GAN_CONFIG_FILE).read_text())["class_name"] == "NORMAL"

    # Same name, more epochs: continues from epoch 3 instead of starting over.
    longer = train_gan(GanConfig(**{**cfg.__dict__, "epochs": 4, "inject_failure": None}), log=quiet)
    assert longer["run"] == summary["run"] and longer["epochs"] == 4 and longer["resumed_from_epoch"] == 3
    extended = json.loads((run / GAN_LOSSES_FILE).read_text())["epochs"]
    assert extended[:3] == history and extended[3]["attempt_start_epoch"] == 3
    assert_replicas_identical(extended)

    # Same name, nothing left to do: no Ray Train start at all.
    t0 = time.perf_counter()
    again = train_gan(GanConfig(**{**cfg.__dict__, "epochs": 4, "inject_failure": None}), log=quiet)
    assert again["checkpoint"] == longer["checkpoint"] and time.perf_counter() - t0 < 10


@pytest.mark.slow  # CXR_RAY_SLOW=1 (the default run keeps the DCGAN trained on S3 by the S3 study job)
def test_conditional_gan_writes_checkpoints_and_grids_to_s3(sample64, s3_server, s3_bucket):
    storage_uri = f"s3://{s3_bucket}/gan"
    cfg = GanConfig(data=sample64, storage=storage_uri, class_name="all", conditional=True, epochs=1, **TINY)
    summary = train_gan(cfg, s3=s3_server, log=quiet)

    prefix = f"gan/{summary['run']}/"
    keys = {o["Key"] for o in boto3_client(s3_server).list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]}
    for name in (f"{SAMPLES_DIR}/epoch_000.png", f"{SAMPLES_DIR}/epoch_001.png", GAN_LOSSES_FILE, GAN_SUMMARY_FILE, GAN_CONFIG_FILE):
        assert prefix + name in keys
    assert any(k.endswith(f"/{STATE_FILE}") and "/checkpoint_" in k for k in keys)
    assert summary["checkpoint"].startswith(f"s3://{s3_bucket}/gan/")

    state = load_gan_state(summary["run_dir"], s3_server)
    generator = generator_from_state(state)
    assert generator.num_classes == 2
    fakes = sample(generator, torch.randn(4, 16), torch.tensor([0, 0, 1, 1]))
    assert fakes.shape == (4, 1, 64, 64) and fakes.abs().max() <= 1.0
    assert_replicas_identical(state["history"])


def test_refusals_happen_before_training(sample64, tmp_path):
    storage_root = tmp_path / "runs"
    train_kwargs = dict(data=sample64, storage=str(storage_root), name="taken", epochs=1, **TINY)
    (storage_root / "taken").mkdir(parents=True)
    (storage_root / "taken" / GAN_CONFIG_FILE).write_text(json.dumps({"ngf": 64}))
    with pytest.raises(ConfigError, match="trained with different"):
        train_gan(GanConfig(**train_kwargs), log=quiet)
    with pytest.raises(ConfigError, match="sync_bn needs GPU"):
        train_gan(GanConfig(**{**train_kwargs, "name": "sync", "sync_bn": True, "use_gpu": False}), log=quiet)
    with pytest.raises(ConfigError, match="does not match"):
        train_gan(GanConfig(**{**train_kwargs, "name": "size", "image_size": 128}), log=quiet)


# ---------------------------------------------------------------- CLI


def cli_app() -> typer.Typer:
    """The commands as app.py registers them."""
    from cxr_ray.cli.train_gan_cmd import EPILOG, EPILOG_QUALITY, quality
    from cxr_ray.cli.train_gan_cmd import train_gan as train_gan_cmd

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(name="train-gan", epilog=EPILOG)(train_gan_cmd)
    app.command(name="gan-quality", epilog=EPILOG_QUALITY)(quality)
    return app


def test_cli_module_is_light_and_commands_have_examples():
    code = (
        "import sys, cxr_ray.cli.train_gan_cmd\n"
        "print('HEAVY', [m for m in ('torch', 'ray', 'pyarrow', 'torchvision') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for command in ("train-gan", "gan-quality"):
        result = CliRunner().invoke(cli_app(), [command, "--help"])
        assert result.exit_code == 0 and "Examples" in result.output


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    result = CliRunner().invoke(cli_app(), ["train-gan", str(tmp_path / "no-table"), "--storage", str(tmp_path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "not a complete image table" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli_app(), ["train-gan", "t", "--class", "COVID"])
    assert result.exit_code == 2 and "class_name must be one of" in result.output
