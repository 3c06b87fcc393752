"""Registry, classifier backbones, ImageNet weight loading and the DCGAN."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn as nn
from torchvision import models as tv

from cxr_ray.models import create_model, list_models, register_model
from cxr_ray.models import registry
from cxr_ray.models.cnn import CompactCNN
from cxr_ray.models.dcgan import Discriminator, Generator, build_dcgan, weights_init
from cxr_ray.models.torchvision_models import PretrainedWeightsUnavailable, adapt_input_conv

BUILTIN = {"cnn", "resnet18", "resnet50", "mobilenet_v2"}


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def _forward_backward(model: nn.Module, image_size: int, num_classes: int) -> None:
    model.train()
    x = torch.randn(2, 1, image_size, image_size)
    out = model(x)
    assert out.shape == (2, num_classes)
    out.logsumexp(dim=1).sum().backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)


def test_builtin_models_are_registered_on_package_import():
    assert BUILTIN <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_model_trains_on_gray_64px(name, num_classes):
    model = create_model(name, num_classes=num_classes, in_channels=1, image_size=64)
    _forward_backward(model, 64, num_classes)


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_128px(name):
    _forward_backward(create_model(name, image_size=128), 128, 2)


def test_cnn_at_224px_and_its_size():
    model = create_model("cnn", image_size=224).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 224, 224)).shape == (1, 2)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_params <= 2_000_000
    # Above 64 px the stem strides, so the final map stays small.
    assert model.stem[0].stride == (2, 2) and create_model("cnn", image_size=64).stem[0].stride == (1, 1)


def test_cnn_accepts_architecture_kwargs():
    model = create_model("cnn", widths=(8, 16, 32, 64), dropout=0.0)
    assert isinstance(model, CompactCNN) and model.head.in_features == 64 and model.dropout.p == 0.0
    with pytest.raises(TypeError):
        create_model("cnn", no_such_option=1)


def test_unknown_model_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'resnet19'") as info:
        create_model("resnet19")
    for name in BUILTIN:
        assert name in str(info.value)


def test_shared_argument_checks():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("cnn", num_classes=0)
    with pytest.raises(ValueError, match="image_size"):
        create_model("cnn", image_size=16)
    with pytest.raises(ValueError, match="weights_path is only used with pretrained=True"):
        create_model("resnet18", weights_path="/some/file.pth")


def test_register_model_adds_a_name_and_refuses_a_second_builder(monkeypatch):
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))

    @register_model("tiny_test_model")
    def build_tiny(*, num_classes, in_channels, image_size, pretrained, weights_path):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))

    assert "tiny_test_model" in list_models()
    assert create_model("tiny_test_model", image_size=32)(torch.randn(2, 1, 32, 32)).shape == (2, 2)
    with pytest.raises(ValueError, match="already registered"):

        @register_model("tiny_test_model")
        def another_builder(**kwargs):
            return nn.Identity()


def test_cnn_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="no ImageNet weights"):
        create_model("cnn", pretrained=True)


# ---- ImageNet weights ------------------------------------------------------------------------


def test_offline_download_failure_explains_how_to_provide_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    # Make "offline" hold on machines that do have internet, so the test never downloads 45 MB.
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        create_model("resnet18", pretrained=True)
    message = str(info.value)
    assert "could not be downloaded" in message
    assert "weights_path=" in message and "--weights-path" in message
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert isinstance(info.value, RuntimeError)


def test_pretrained_from_torch_home_cache_sums_rgb_filters(tmp_path, monkeypatch):
    # A random stand-in for the ImageNet file, placed where torchvision looks before downloading.
    reference = tv.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    model = create_model("resnet18", pretrained=True, num_classes=3)
    assert model.conv1.in_channels == 1
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 3
    _forward_backward(model, 64, 3)


def test_pretrained_from_weights_path(tmp_path):
    reference = tv.mobilenet_v2()
    path = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("mobilenet_v2", pretrained=True, weights_path=str(path), num_classes=2)
    torch.testing.assert_close(model.features[0][0].weight, reference.features[0][0].weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.features[5].conv[1][0].weight, reference.features[5].conv[1][0].weight)
    assert model.classifier[1].out_features == 2


def test_weights_path_problems_are_reported(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(PretrainedWeightsUnavailable, match="nope.pth"):
        create_model("resnet18", pretrained=True, weights_path=str(missing))

    wrong_architecture = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong_architecture)
    with pytest.raises(ValueError, match="does not fit ResNet.*Missing key"):
        create_model("resnet18", pretrained=True, weights_path=str(wrong_architecture))

    pickled_object = tmp_path / "object.pth"
    torch.save({"model": nn.Linear(2, 2)}, pickled_object)  # needs unpickling a class: refused
    with pytest.raises(PretrainedWeightsUnavailable, match="not a loadable state_dict"):
        create_model("resnet18", pretrained=True, weights_path=str(pickled_object))


def test_summed_filters_give_gray_input_the_rgb_response():
    rgb_conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    gray_conv = adapt_input_conv(rgb_conv, 1)
    gray = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(gray_conv(gray), rgb_conv(gray.expand(-1, 3, -1, -1)))
    assert adapt_input_conv(rgb_conv, 4).weight.shape == (8, 4, 3, 3)


# ---- DCGAN -----------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [64, 128])
def test_dcgan_shapes(image_size):
    generator, discriminator = build_dcgan(image_size, nz=100, ngf=16, ndf=16)
    fake = generator(torch.randn(2, 100, 1, 1))
    assert fake.shape == (2, 1, image_size, image_size)
    assert fake.min() >= -1 and fake.max() <= 1
    assert generator(torch.randn(2, 100)).shape == fake.shape  # flat noise is accepted
    logits = discriminator(fake)
    assert logits.shape == (2,)
    nn.functional.binary_cross_entropy_with_logits(logits, torch.ones(2)).backward()
    assert all(p.grad is not None for p in generator.parameters())


def test_dcgan_default_widths_follow_the_paper_at_64px():
    generator, discriminator = build_dcgan(64)
    assert generator.main[0].out_channels == 512 and discriminator.main[-1].in_channels == 512
    generator128, _ = build_dcgan(128)
    assert generator128.main[0].out_channels == 1024


def test_conditional_dcgan_uses_labels():
    generator, discriminator = build_dcgan(64, ngf=16, ndf=16, num_classes=2)
    generator.eval(), discriminator.eval()
    noise = torch.randn(2, 100, 1, 1)
    normal = generator(noise, torch.tensor([0, 0]))
    pneumonia = generator(noise, torch.tensor([1, 1]))
    assert normal.shape == (2, 1, 64, 64)
    assert not torch.allclose(normal, pneumonia)
    assert discriminator.main[0].in_channels == 2  # image + label channel
    logits = discriminator(normal, torch.tensor([0, 1]))
    assert logits.shape == (2,)
    assert not torch.allclose(logits, discriminator(normal, torch.tensor([1, 0])))
    with pytest.raises(ValueError, match="pass labels"):
        generator(noise)
    with pytest.raises(ValueError, match="pass labels"):
        discriminator(normal)
    unconditional = Generator(ngf=16)
    with pytest.raises(ValueError, match="labels must be None"):
        unconditional(noise, torch.tensor([0, 1]))


def test_weights_init_statistics():
    generator, discriminator = build_dcgan(64)
    modules = [m for net in (generator, discriminator) for m in net.modules()]
    conv = torch.cat([m.weight.flatten() for m in modules if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    bn_weight = torch.cat([m.weight for m in modules if isinstance(m, nn.BatchNorm2d)])
    bn_bias = torch.cat([m.bias for m in modules if isinstance(m, nn.BatchNorm2d)])
    assert abs(conv.mean().item()) < 1e-3
    assert conv.std().item() == pytest.approx(0.02, rel=0.02)
    assert bn_weight.mean().item() == pytest.approx(1.0, abs=5e-3)
    assert bn_weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.count_nonzero(bn_bias) == 0
    # Applied to a default-initialised conv, it changes the scale (PyTorch's default is not N(0, 0.02)).
    layer = nn.Conv2d(64, 64, 4)
    weights_init(layer)
    assert layer.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_dcgan_rejects_unsupported_sizes():
    for build in (lambda: build_dcgan(96), lambda: Generator(image_size=96), lambda: Discriminator(image_size=96)):
        with pytest.raises(ValueError, match="64 or 128, got 96"):
            build()


def test_scores_keep_confident_detectors_apart():
    # A float32 softmax rounds 1 - e^-18 and 1 - e^-25 to the same 1.0: thresholds near 1 would tie.
    import numpy as np

    from cxr_ray.pixels import positive_probability

    logits = torch.tensor([[0.0, 18.0], [0.0, 20.0], [0.0, 25.0], [3.0, 1.0]])
    assert len(set(torch.softmax(logits, 1)[:3, 1].tolist())) == 1
    p = positive_probability(logits)
    assert p.dtype == np.float64 and p[0] < p[1] < p[2] < 1.0
    assert abs(p[3] - 1 / (1 + np.exp(2.0))) < 1e-15  # P(class 1) = sigmoid(l1 - l0)


def test_npr_residual_keeps_only_what_differs_inside_each_2x2_cell():
    from cxr_ray.models.input_filters import npr_residual

    x = torch.arange(16.0).view(1, 1, 4, 4)
    r = npr_residual(x)
    assert torch.equal(r[..., ::2, ::2], torch.zeros(1, 1, 2, 2))  # each cell's anchor
    assert r[0, 0, 0, 1] == 1 and r[0, 0, 1, 0] == 4 and r[0, 0, 1, 1] == 5  # differences to the anchor
    # Content that is constant within cells (what nearest-neighbour upsampling makes) leaves nothing.
    blocky = torch.nn.functional.interpolate(torch.randn(2, 1, 8, 8), scale_factor=2.0, mode="nearest")
    assert npr_residual(blocky).abs().max() == 0
    assert npr_residual(torch.randn(1, 1, 5, 7)).shape == (1, 1, 5, 7)  # odd sizes keep their shape


def test_an_input_filter_travels_in_model_kwargs_and_adds_no_weights():
    plain = create_model("resnet18", image_size=64)
    filtered = create_model("resnet18", image_size=64, input_filter="npr")
    assert list(filtered.state_dict()) == list(plain.state_dict())  # checkpoints load either way
    filtered.load_state_dict(plain.state_dict())
    plain.eval(), filtered.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        # The filtered model sees only neighbouring-pixel differences: a brightness offset changes nothing,
        # while the same weights without the filter see it.
        assert torch.allclose(filtered(x), filtered(x + 0.3), atol=1e-5)
        assert not torch.allclose(plain(x), plain(x + 0.3), atol=1e-3)
    with pytest.raises(ValueError, match="input_filter"):
        create_model("cnn", input_filter="sobel")


def test_real_novelty_flags_what_lies_far_from_the_real_train_images():
    from cxr_ray.models.novelty import RealNovelty

    model = create_model("cnn", image_size=32, real_novelty=True)
    assert isinstance(model, RealNovelty)
    reals = [torch.rand(64, 1, 32, 32) * 0.2 for _ in range(4)]  # dim, low-contrast "reals"
    x = torch.rand(8, 1, 32, 32) * 0.2
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.fit(reals[:3], reals[3:])
        assert model.fitted == 1
        # Unlike anything real: the distance part dominates and the score rises far above the validation reals'.
        odd = torch.rand(8, 1, 32, 32) * 2 - 1
        real_score = model(x)[:, 1]
        assert (model(odd)[:, 1] > real_score.max()).all()
        assert model(x)[:, 0].abs().max() == 0  # two-class logits whose gap is the score
    model.train()
    torch.manual_seed(1)
    wrapped = model(x).detach()
    torch.manual_seed(1)  # the same dropout draws
    assert torch.equal(wrapped, model.net(x).detach())  # training sees the plain detector
    # The fitted model is plain data: rebuilt from its kwargs and state it scores the same.
    again = create_model("cnn", image_size=32, real_novelty=True)
    again.load_state_dict(model.state_dict())
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.allclose(again(odd), model(odd)) and not torch.allclose(before, model(x))
