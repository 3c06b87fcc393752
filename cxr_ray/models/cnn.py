"""The study's compact custom CNN for grayscale chest X-rays.

A plain VGG-like stack (no residuals needed at this depth): a stem conv, four
stages of two 3x3 conv-BN-ReLU blocks (32-64-128-256 channels), max-pool
between stages, global average pooling, dropout and a linear head. About 1.2M
parameters, so it trains from scratch on a few thousand X-rays without the
overfitting of ImageNet-sized backbones.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from cxr_ray.models.registry import register_model

DEFAULT_WIDTHS = (32, 64, 128, 256)


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    # No conv bias: BatchNorm's shift makes it redundant.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class CompactCNN(nn.Module):
    """Stem + 4 conv stages + GAP + dropout + linear head.

    Global average pooling makes it work for any input size; ``image_size``
    only sets the stem stride. Above 64 px the stem halves the resolution so
    the full-width stage 1 does not dominate the cost at 128/224 px (final
    feature map: 8x8 at 64 and 128 px, 14x14 at 224 px).
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        image_size: int = 64,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths needs one channel count per stage (4), got {list(widths)}")
        stem_stride = 1 if image_size <= 64 else 2
        self.stem = conv_bn_relu(in_channels, widths[0], stride=stem_stride)
        stages = []
        previous = widths[0]
        for index, width in enumerate(widths):
            # Pool before stages 2-4 rather than after stage 4: a pool right before
            # global average pooling would only discard information.
            downsample = [nn.MaxPool2d(kernel_size=2)] if index > 0 else []
            stages.append(nn.Sequential(*downsample, conv_bn_relu(previous, width), conv_bn_relu(width, width)))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=dropout)
        self.head = nn.Linear(previous, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                # Small head weights: initial logits near 0, i.e. near-uniform class probabilities.
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.dropout(x))


@register_model("cnn")
def build_cnn(
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    pretrained: bool,
    weights_path: str | None,
    **kwargs: Any,
) -> CompactCNN:
    """The custom CNN; extra kwargs: ``widths`` (4 ints), ``dropout``."""
    if pretrained or weights_path is not None:
        raise ValueError("model 'cnn' has no ImageNet weights; train it from scratch (pretrained=False)")
    return CompactCNN(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
