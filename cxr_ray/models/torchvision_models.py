"""torchvision backbones (resnet18, resnet50, mobilenet_v2) for grayscale input.

ImageNet weights come from ``weights_path`` (a local or s3:// state_dict file)
or torchvision's cache/download under ``$TORCH_HOME/hub/checkpoints``. Both
are loaded with ``weights_only=True``, so a weights file cannot run code.
``image_size`` does not change these architectures: they end in adaptive
average pooling, so any size >= 32 px works.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn

from cxr_ray import storage
from cxr_ray.models.registry import register_model

# torchvision is imported by the builders, not here: importing it imports torch._dynamo (about 3 s of CPU, as much
# as torch itself), which every scoring task and Ray Data actor that only builds the cnn or a generator would pay on
# start-up (issue 18). Training workers import torch._dynamo anyway, through torch.optim's first call.
if TYPE_CHECKING:
    from torchvision.models._api import WeightsEnum


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights could not be downloaded or read; the message says how to provide them."""


def weights_file_name(weights: WeightsEnum) -> str:
    """The file name torchvision caches ``weights`` under, e.g. ``resnet18-f37072fd.pth``."""
    return os.path.basename(weights.url)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_from_path(weights_path: str) -> dict[str, torch.Tensor]:
    try:
        data = storage.read_bytes(weights_path)
    except storage.StorageError as exc:
        raise PretrainedWeightsUnavailable(f"cannot read weights_path {weights_path!r}: {exc}") from exc
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file; all mean the same here
        raise PretrainedWeightsUnavailable(
            f"weights_path {weights_path!r} is not a loadable state_dict: {_first_line(exc)}"
        ) from exc
    if not isinstance(state, dict):
        raise PretrainedWeightsUnavailable(
            f"weights_path {weights_path!r} holds a {type(state).__name__}, not a state_dict"
        )
    return state


def _load_from_torchvision_cache(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    file_name = weights_file_name(weights)
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        # check_hash verifies a fresh download against the hash in the file name;
        # weights_only=True because torch.hub's default would unpickle arbitrary code.
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True, map_location="cpu")
    except Exception as exc:  # URLError offline, HTTPError, a truncated or foreign cache file
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights {weights} could not be downloaded or read ({_first_line(exc)}). "
            f"Provide them yourself: pass weights_path= (CLI: --weights-path) pointing to {file_name} "
            f"from {weights.url}, or put that file at {os.path.join(cache_dir, file_name)} "
            f"(i.e. $TORCH_HOME/hub/checkpoints/{file_name})."
        ) from exc


def load_imagenet_state(weights: WeightsEnum, weights_path: str | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet state_dict for ``weights``, from ``weights_path`` if given, else torchvision's cache/download."""
    if weights_path is not None:
        return _load_from_path(weights_path)
    return _load_from_torchvision_cache(weights)


def adapt_input_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of an RGB ``conv`` that takes ``in_channels`` inputs, keeping its learnt response.

    For 1 channel the RGB filters are summed: conv(W_sum, x) equals conv(W, [x, x, x]),
    so a gray image gets exactly the response the network gave the same image as RGB.
    For other counts the RGB filters are cycled and rescaled by 3/in_channels to keep
    the activation scale (as timm does).
    """
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        weight = conv.weight
        if in_channels == 1:
            new.weight.copy_(weight.sum(dim=1, keepdim=True))
        else:
            repeats = -(-in_channels // weight.shape[1])
            new.weight.copy_(weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _fresh_conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A randomly initialised stem conv for ``in_channels``, initialised as torchvision does."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _new_head(in_features: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(in_features, num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def _load_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        # The first line of this RuntimeError is generic; the key lists follow it.
        detail = " ".join(str(exc).split())
        raise ValueError(f"{source} does not fit {type(model).__name__}: {detail[:600]}") from exc


def _build(
    constructor: Callable[..., nn.Module],
    weights: WeightsEnum,
    get_stem: Callable[[nn.Module], nn.Conv2d],
    set_stem: Callable[[nn.Module, nn.Conv2d], None],
    get_head: Callable[[nn.Module], nn.Linear],
    set_head: Callable[[nn.Module, nn.Linear], None],
    *,
    num_classes: int,
    in_channels: int,
    pretrained: bool,
    weights_path: str | None,
) -> nn.Module:
    if not pretrained:
        model = constructor(weights=None, num_classes=num_classes)
        if in_channels != 3:
            set_stem(model, _fresh_conv_like(get_stem(model), in_channels))
        return model
    # Load into the stock 3-channel / 1000-class model first, so the file is checked
    # against the exact architecture it was made for, then adapt stem and head.
    model = constructor(weights=None, num_classes=len(weights.meta["categories"]))
    _load_checked(model, load_imagenet_state(weights, weights_path), weights_path or str(weights))
    set_stem(model, adapt_input_conv(get_stem(model), in_channels))
    set_head(model, _new_head(get_head(model).in_features, num_classes))
    return model


def _resnet(constructor: Callable[..., nn.Module], weights: WeightsEnum, **kwargs: Any) -> nn.Module:
    return _build(
        constructor,
        weights,
        get_stem=lambda m: m.conv1,
        set_stem=lambda m, conv: setattr(m, "conv1", conv),
        get_head=lambda m: m.fc,
        set_head=lambda m, head: setattr(m, "fc", head),
        **kwargs,
    )


@register_model("resnet18")
def build_resnet18(
    *, num_classes: int, in_channels: int, image_size: int, pretrained: bool, weights_path: str | None
) -> nn.Module:
    """torchvision ResNet-18; ImageNet weights ``ResNet18_Weights.IMAGENET1K_V1``."""
    from torchvision.models import ResNet18_Weights, resnet18

    return _resnet(
        resnet18,
        ResNet18_Weights.IMAGENET1K_V1,
        num_classes=num_classes,
        in_channels=in_channels,
        pretrained=pretrained,
        weights_path=weights_path,
    )


@register_model("resnet50")
def build_resnet50(
    *, num_classes: int, in_channels: int, image_size: int, pretrained: bool, weights_path: str | None
) -> nn.Module:
    """torchvision ResNet-50; ImageNet weights ``ResNet50_Weights.IMAGENET1K_V1``."""
    from torchvision.models import ResNet50_Weights, resnet50

    return _resnet(
        resnet50,
        ResNet50_Weights.IMAGENET1K_V1,
        num_classes=num_classes,
        in_channels=in_channels,
        pretrained=pretrained,
        weights_path=weights_path,
    )


@register_model("mobilenet_v2")
def build_mobilenet_v2(
    *, num_classes: int, in_channels: int, image_size: int, pretrained: bool, weights_path: str | None
) -> nn.Module:
    """torchvision MobileNetV2; ImageNet weights ``MobileNet_V2_Weights.IMAGENET1K_V1``."""
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    return _build(
        mobilenet_v2,
        MobileNet_V2_Weights.IMAGENET1K_V1,
        get_stem=lambda m: m.features[0][0],
        set_stem=lambda m, conv: m.features[0].__setitem__(0, conv),
        get_head=lambda m: m.classifier[1],
        set_head=lambda m, head: m.classifier.__setitem__(1, head),
        num_classes=num_classes,
        in_channels=in_channels,
        pretrained=pretrained,
        weights_path=weights_path,
    )
