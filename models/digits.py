"""A small CNN for scikit-learn's 8x8 handwritten digits, its data split, deterministic training and npz weights."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.errors import ModelLoadError

from .layers import ClassifierHead, conv_bn_act, init_weights
from .registry import ModelCfg, register_model

WEIGHTS_PATH = Path(__file__).with_name("digits_cnn.npz")
PRETRAINED_RESOLUTION = 8
NUM_CLASSES = 10
LABELS = tuple(str(digit) for digit in range(NUM_CLASSES))


class DigitsCNN(nn.Module):
    """Three conv-BN-ReLU blocks (one strided), global average pool, linear; works at 8x8 and upsampled 32x32."""

    def __init__(self, resolution: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(1, 16, 3, activation=nn.ReLU),
            conv_bn_act(16, 32, 3, stride=2, activation=nn.ReLU),
            conv_bn_act(32, 32, 3, activation=nn.ReLU),
        )
        self.classifier = ClassifierHead(32, NUM_CLASSES)
        self.input_shape = (1, 1, resolution, resolution)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_digits_weights(model: nn.Module, path: str | Path = WEIGHTS_PATH) -> nn.Module:
    """Load an npz of state_dict arrays (no pickle) into model; ModelLoadError naming the file on any mismatch."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"{path}: not a readable numpy .npz weights file ({exc})") from exc
    expected = model.state_dict()
    if arrays.keys() != expected.keys():
        missing = sorted(expected.keys() - arrays.keys())
        extra = sorted(arrays.keys() - expected.keys())
        raise ModelLoadError(f"{path}: state_dict keys differ; missing {missing}, unexpected {extra}")
    for key, tensor in expected.items():
        if tuple(arrays[key].shape) != tuple(tensor.shape):
            raise ModelLoadError(f"{path}: {key} has shape {arrays[key].shape}, expected {tuple(tensor.shape)}")
    model.load_state_dict({key: torch.from_numpy(array).to(expected[key].dtype) for key, array in arrays.items()})
    return model


def save_digits_weights(model: nn.Module, path: str | Path = WEIGHTS_PATH) -> None:
    """Write model's state_dict as an uncompressed npz keyed by state_dict names (readable without pickle)."""
    np.savez(path, **{key: tensor.detach().cpu().numpy() for key, tensor in model.state_dict().items()})


@register_model(ModelCfg((1, PRETRAINED_RESOLUTION, PRETRAINED_RESOLUTION), labels=LABELS))
def digits_cnn(resolution: int = 8, pretrained: bool = False) -> DigitsCNN:
    """Digits CNN (1x8x8 in, 10 logits out); pretrained loads the bundled weights trained at 8x8."""
    model = DigitsCNN(resolution)
    if pretrained:
        if resolution != PRETRAINED_RESOLUTION:
            raise ModelLoadError(
                f"{WEIGHTS_PATH}: weights were trained at resolution {PRETRAINED_RESOLUTION}, asked for {resolution}"
            )
        load_digits_weights(model, WEIGHTS_PATH)
    return model


def load_digits_split(
    resolution: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed stratified 80/20 split of sklearn's digits as float32 NCHW in [0, 1], bilinearly resized if needed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    if resolution != images.shape[-1]:
        images = nn.functional.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
        images = images.clamp(0.0, 1.0)
    x_train, x_test, y_train, y_test = train_test_split(
        images.numpy(), digits.target.astype(np.int64), test_size=0.2, stratify=digits.target, random_state=seed
    )
    return x_train, y_train, x_test, y_test


def evaluate_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of model on NCHW float32 images x with integer labels y."""
    model.eval()
    with torch.no_grad():
        predictions = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predictions == y).mean())


@contextmanager
def _deterministic_torch(seed: int) -> Iterator[torch.Generator]:
    """Seed torch, force deterministic single-threaded kernels, and restore the global settings afterwards."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def train_digits_cnn(
    resolution: int = 8, seed: int = 0, epochs: int = 20, batch_size: int = 32, lr: float = 3e-3
) -> tuple[DigitsCNN, float]:
    """Train DigitsCNN from scratch on the fixed split, bit-for-bit repeatable for a seed; returns (model, test acc)."""
    x_train, y_train, x_test, y_test = load_digits_split(resolution, seed)
    images, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    with _deterministic_torch(seed) as generator:
        model = DigitsCNN(resolution)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps_per_epoch = -(-len(images) // batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(images), generator=generator).split(batch_size):
                optimizer.zero_grad()
                loss_fn(model(images[batch]), labels[batch]).backward()
                optimizer.step()
                schedule.step()
        accuracy = evaluate_accuracy(model, x_test, y_test)
    return model.eval(), accuracy
