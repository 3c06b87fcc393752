"""Name -> builder registry for the classifiers and detectors, in the style of timm.

Training code and configs refer to architectures by name only; each builder
module registers itself with ``@register_model`` and ``create_model`` checks
the arguments every architecture shares before handing over to the builder.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

ModelBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, ModelBuilder] = {}

# Below this the torchvision backbones (32x downsampling) run out of pixels.
MIN_IMAGE_SIZE = 32


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make ``fn`` available as ``create_model(name, ...)``.

    The builder is called with keyword arguments ``num_classes``, ``in_channels``,
    ``image_size``, ``pretrained``, ``weights_path`` plus any extra ones given to
    ``create_model``.
    """

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        known = _BUILDERS.get(name)
        # Re-running the same definition (importlib.reload) is harmless; two different
        # builders claiming one name would silently change which model a config gets.
        if known is not None and (known.__module__, known.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"model name {name!r} is already registered by {known.__module__}.{known.__qualname__}")
        _BUILDERS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_BUILDERS)


def registered_models() -> list[str]:
    """Registered model names in registration order (cnn, then the torchvision backbones as declared).

    The study trains and reports models in this order, and hashes its list of trainings in it.
    """
    return list(_BUILDERS)


def create_model(
    name: str,
    *,
    num_classes: int = 2,
    in_channels: int = 1,
    image_size: int = 64,
    pretrained: bool = False,
    weights_path: str | None = None,
    input_filter: str = "none",
    real_novelty: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name`` for ``in_channels`` x ``image_size``² inputs and ``num_classes`` logits.

    ``pretrained=True`` loads ImageNet weights (from ``weights_path`` if given,
    otherwise torchvision's download cache); not every model has them.
    ``input_filter`` names a fixed filter applied to the input first (`cxr_ray.models.input_filters`);
    ``real_novelty`` wraps the model with a one-class model of real images (`cxr_ray.models.novelty`).
    """
    from cxr_ray.models.input_filters import attach_input_filter, check_input_filter

    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models()) or '(none registered)'}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if weights_path is not None and not pretrained:
        # Ignoring it silently would train from scratch while the user thinks otherwise.
        raise ValueError("weights_path is only used with pretrained=True")
    check_input_filter(input_filter)
    model = builder(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        pretrained=pretrained,
        weights_path=weights_path,
        **kwargs,
    )
    model = attach_input_filter(model, input_filter)
    if real_novelty:
        from cxr_ray.models.novelty import RealNovelty

        model = RealNovelty(model)
    return model
