"""Checkpoints: plain-data round trip, refusal of objects, safe loading, atomic writes; the classifier format."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from cxr_ray.checkpoint import CheckpointError, load_state, model_state, save_state, unwrap_model
from cxr_ray.storage import StorageError


def _trained_model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = nn.functional.cross_entropy(model(torch.randn(3, 1, 8, 8)), torch.tensor([0, 1, 1]))
    loss.backward()
    optimizer.step()  # creates per-parameter state keyed by int
    return model, optimizer


class CustomThing:
    """A class a weights_only load must refuse to reconstruct."""

    def __init__(self) -> None:
        self.value = 1


class CreatesFileOnUnpickle:
    """Unpickling this runs open(path, 'w'): proof that a plain torch.load would execute code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_round_trip_of_model_and_optimizer_state(tmp_path):
    model, optimizer = _trained_model_and_optimizer()
    state = {
        "model": model_state(model),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "config": {"model": "cnn", "lr": 1e-3, "betas": (0.9, 0.999), "pretrained": False, "weights_path": None},
        "history": [{"epoch": 1, "val_auc": 0.91}, {"epoch": 2, "val_auc": 0.93}],
    }
    uri = str(tmp_path / "run" / "checkpoints" / "last.pt")  # folders are created
    save_state(state, uri)
    loaded = load_state(uri)

    assert loaded["epoch"] == 3 and loaded["config"] == state["config"] and loaded["history"] == state["history"]
    for key, tensor in state["model"].items():
        assert torch.equal(loaded["model"][key], tensor)

    fresh_model, _ = _trained_model_and_optimizer()
    with torch.no_grad():
        for p in fresh_model.parameters():
            p.zero_()
    fresh_model.load_state_dict(loaded["model"])
    fresh_optimizer = torch.optim.AdamW(fresh_model.parameters(), lr=1e-3)
    fresh_optimizer.load_state_dict(loaded["optimizer"])
    for index, param_state in optimizer.state_dict()["state"].items():
        assert torch.equal(fresh_optimizer.state_dict()["state"][index]["exp_avg"], param_state["exp_avg"])
    x = torch.randn(2, 1, 8, 8)
    model.eval(), fresh_model.eval()
    assert torch.equal(model(x), fresh_model(x))


def test_file_uri_is_accepted(tmp_path):
    uri = f"file://{tmp_path}/c.pt"
    save_state({"w": torch.ones(2)}, uri)
    assert torch.equal(load_state(uri)["w"], torch.ones(2))


@pytest.mark.parametrize(
    ("state", "key_path"),
    [
        ({"config": {"optimizer": torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)}}, "config.optimizer"),
        ({"metrics": {"auc": np.float64(0.9)}}, "metrics.auc"),  # a float subclass, pickled as numpy
        ({"history": [{"loss": 0.5}, {"when": CustomThing()}]}, "history[1].when"),
        ({"model": nn.Linear(2, 2)}, "model"),
    ],
)
def test_refuses_non_plain_values_naming_the_key_path(tmp_path, state, key_path):
    uri = tmp_path / "bad.pt"
    with pytest.raises(TypeError, match=rf"checkpoint state {re.escape(key_path)} is a "):
        save_state(state, str(uri))
    assert not uri.exists()
    assert os.listdir(tmp_path) == []


def test_refuses_non_str_int_keys(tmp_path):
    with pytest.raises(TypeError, match="key of type tuple"):
        save_state({"scores": {(0, 1): 0.5}}, str(tmp_path / "bad.pt"))
    with pytest.raises(TypeError, match="must be a dict"):
        save_state([torch.ones(1)], str(tmp_path / "bad.pt"))


def test_pickled_custom_object_fails_to_load_with_checkpoint_error(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"thing": CustomThing()}, path)  # plain torch.save pickles anything
    with pytest.raises(CheckpointError, match=str(path)):
        load_state(str(path))


def test_loading_never_executes_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"payload": CreatesFileOnUnpickle(str(marker))}, path)
    with pytest.raises(CheckpointError):
        load_state(str(path))
    assert not marker.exists()


def test_garbage_and_non_dict_files_give_checkpoint_error(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_state(str(garbage))
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), tensor_only)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_state(str(tensor_only))


def test_missing_file_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="missing.pt"):
        load_state(str(tmp_path / "missing.pt"))


def test_atomic_write_leaves_only_the_checkpoint(tmp_path):
    uri = str(tmp_path / "last.pt")
    save_state({"epoch": 1, "w": torch.zeros(3)}, uri)
    save_state({"epoch": 2, "w": torch.ones(3)}, uri)  # overwrite in place
    assert os.listdir(tmp_path) == ["last.pt"]
    assert load_state(uri)["epoch"] == 2
    # A refused save leaves the previous checkpoint untouched.
    with pytest.raises(TypeError):
        save_state({"epoch": 3, "bad": CustomThing()}, uri)
    assert os.listdir(tmp_path) == ["last.pt"]
    assert load_state(uri)["epoch"] == 2


def test_unwrap_model_and_model_state_drop_wrappers_and_copy_to_cpu():
    model, _ = _trained_model_and_optimizer()
    wrapped = nn.DataParallel(model)  # same `.module` wrapping as DistributedDataParallel
    compiled = torch.compile(wrapped)  # lazy: nothing is compiled until called
    assert unwrap_model(wrapped) is model
    assert unwrap_model(compiled) is model
    assert unwrap_model(model) is model

    state = model_state(compiled)
    assert set(state) == set(model.state_dict())  # no "module." / "_orig_mod." prefixes
    assert all(t.device.type == "cpu" for t in state.values())
    before = state["0.weight"].clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.equal(state["0.weight"], before)  # a snapshot, not a view of live parameters


# ---------------------------------------------------------------- the classifier checkpoint format


def _classifier_state() -> dict:
    from cxr_ray.classifier_state import build_classifier_state
    from cxr_ray.models import create_model

    kwargs = {"num_classes": 2, "in_channels": 1, "image_size": 64}
    return build_classifier_state(
        config={"data": "/data/real-64", "model": "cnn", "epochs": 2},
        task="deepfake",
        model_name="cnn",
        model_kwargs=kwargs,
        model_state=model_state(create_model("cnn", **kwargs)),
        optimizer_state=None,
        scheduler_state=None,
        epoch=1,
        val_metrics={"val_auc": 0.9, "val_threshold": 0.4},
        threshold=0.4,
        history=[{"epoch": 0, "val_auc": 0.8}, {"epoch": 1, "val_auc": 0.9}],
    )


def test_classifier_state_round_trip_rebuilds_the_model(tmp_path):
    from cxr_ray.classifier_state import CLASSIFIER_FORMAT, load_classifier_state
    from cxr_ray.filenames import STATE_FILE
    from cxr_ray.models import create_model

    state = _classifier_state()
    uri = str(tmp_path / "checkpoint_000001" / STATE_FILE)
    save_state(state, uri)
    loaded = load_classifier_state(uri)
    assert loaded["format"] == CLASSIFIER_FORMAT and loaded["kind"] == "classifier"
    assert (loaded["task"], loaded["epoch"], loaded["threshold"]) == ("deepfake", 1, 0.4)
    assert loaded["history"] == state["history"] and loaded["config"] == state["config"]
    model = create_model(loaded["model_name"], **loaded["model_kwargs"]).eval()
    model.load_state_dict(loaded["model_state"])
    original = create_model("cnn", **state["model_kwargs"]).eval()
    original.load_state_dict(state["model_state"])
    x = torch.randn(2, 1, 64, 64)
    assert torch.equal(model(x), original(x))


def test_classifier_state_written_before_the_format_tag_still_loads(tmp_path):
    from cxr_ray.classifier_state import load_classifier_state

    legacy = _classifier_state()
    del legacy["format"]  # older versions wrote kind == "classifier" only
    uri = str(tmp_path / "state.pt")
    save_state(legacy, uri)
    assert load_classifier_state(uri)["model_name"] == "cnn"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "cxr_ray.dcgan/1"}, r"not a classifier checkpoint \(format 'cxr_ray.dcgan/1'"),
        ({"format": None, "kind": "detector"}, r"not a classifier checkpoint \(kind 'detector'"),
        ({"threshold": None}, "lacks threshold"),
    ],
)
def test_other_checkpoints_are_refused_naming_the_file(tmp_path, change, message):
    from cxr_ray.classifier_state import load_classifier_state

    state = {**_classifier_state(), **change}
    for key in [k for k, v in change.items() if v is None]:
        del state[key]
    uri = str(tmp_path / "other.pt")
    save_state(state, uri)
    with pytest.raises(CheckpointError, match=message) as info:
        load_classifier_state(uri)
    assert str(info.value).startswith(f"{uri}: ")


def test_the_fallback_resume_point_is_the_newest_complete_checkpoint_whatever_ray_recorded(tmp_path):
    """Found from the run folder alone: the newest checkpoint_* holding a state file (one without it, half-written,
    is passed over); Ray's own bookkeeping files are never read. A worker uses it only when Ray restored nothing."""
    from cxr_ray.train.launch import newest_checkpoint_state

    run = tmp_path / "run"
    assert newest_checkpoint_state(str(run), None) is None  # no run folder yet
    for name, complete in (("checkpoint_2026-11-30_10-00-00.000001", True), ("checkpoint_2026-11-30_10-00-05.000001", True),
                           ("checkpoint_2026-11-30_10-00-09.000001", False)):  # fmt: skip
        (run / name).mkdir(parents=True)
        if complete:
            (run / name / "state.pt").write_bytes(b"x")
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    assert newest_checkpoint_state(str(run), None) == str(run / "checkpoint_2026-11-30_10-00-05.000001" / "state.pt")
