"""Factories of the outside models tools/conformance.py runs through the CLI (`tools.conformance_models:NAME`).

Hugging Face `transformers` vision classifiers built from a config, no weights downloaded, called as a user
would (`Model(Config(...)).eval()`, outputs are `ModelOutput` dataclasses); seeded, so every run converts the
same weights. Image sizes are small so a conversion takes a minute or two on 2 cores: SIZES says which.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

NUM_LABELS = 10
SIZES = {"mobilenet_v2": 96, "mobilevit": 128, "efficientnet_b0": 96, "resnet50": 96, "regnet": 96,
         "mcunet_se": 80}  # input height = width; MobileViT's 2x2 patches need every feature map even


def _seeded(build: Any) -> Any:
    torch.manual_seed(0)
    return build().eval()


def _labelled(config: Any) -> Any:
    """The config with NUM_LABELS classes (the `num_labels` setter also makes id2label)."""
    config.num_labels = NUM_LABELS
    return config


def mobilenet_v2() -> torch.nn.Module:
    """MobileNetV2 1.0 (the config's defaults)."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = _labelled(MobileNetV2Config(image_size=SIZES["mobilenet_v2"]))
    return _seeded(lambda: MobileNetV2ForImageClassification(config))


def mobilevit() -> torch.nn.Module:
    """MobileViT-S (the config's defaults): convolutions, transformer blocks, unfold/fold reshapes."""
    from transformers import MobileViTConfig, MobileViTForImageClassification

    config = _labelled(MobileViTConfig(image_size=SIZES["mobilevit"]))
    return _seeded(lambda: MobileViTForImageClassification(config))


def efficientnet_b0() -> torch.nn.Module:
    """EfficientNet-B0: its width, depth and head size (the config's defaults are B7's)."""
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    config = _labelled(EfficientNetConfig(image_size=SIZES["efficientnet_b0"], width_coefficient=1.0,
                                          depth_coefficient=1.0, dropout_rate=0.2, hidden_dim=1280))
    return _seeded(lambda: EfficientNetForImageClassification(config))


def resnet50() -> torch.nn.Module:
    """ResNet-50 (ResNetConfig's defaults)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    return _seeded(lambda: ResNetForImageClassification(_labelled(ResNetConfig())))


def regnet() -> torch.nn.Module:
    """RegNet (RegNetConfig's defaults: Y-type blocks with squeeze-excite, grouped 3x3 convolutions)."""
    from transformers import RegNetConfig, RegNetForImageClassification

    return _seeded(lambda: RegNetForImageClassification(_labelled(RegNetConfig())))


def mcunet_se() -> torch.nn.Module:
    """The MCUNet-style net of tests/outside_models.py (SE blocks, hard-swish, transpose + mean + mean) in torch."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from outside_models import McuNetSe

    return _seeded(McuNetSe)
