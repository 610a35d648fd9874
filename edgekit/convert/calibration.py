"""Calibration data from a .npy/.npz array or a folder of images, checked against the model input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import CalibrationError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input: scaled to [0, 1], then (x - mean) / std per channel."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """C,H,W image in [0, 1] -> normalised input."""
        shape = (-1, 1, 1)
        return (image - np.array(self.mean, np.float32).reshape(shape)) / np.array(self.std, np.float32).reshape(shape)


def load_calibration(source: str | Path, input_shape: tuple[int, ...], max_samples: int,
                     preprocessing: Preprocessing = Preprocessing()) -> np.ndarray:
    """Up to `max_samples` float32 N,C,H,W samples matching `input_shape` (whose first dim is the batch).

    Arrays are taken as model inputs already; images go through `preprocessing`.
    """
    path = Path(source)
    if not path.exists():
        raise CalibrationError(f"{path}: no such file or folder")
    if path.is_dir():
        data = _read_images(path, input_shape, max_samples, preprocessing)
    elif path.suffix in (".npy", ".npz"):
        data = _read_array(path)
    else:
        raise CalibrationError(f"{path}: calibration data must be a .npy/.npz file or a folder of images")
    if not np.issubdtype(data.dtype, np.number):
        raise CalibrationError(f"{path}: calibration array has dtype {data.dtype}, expected numbers")
    if data.shape[1:] != tuple(input_shape[1:]):
        raise CalibrationError(f"{path}: calibration samples have shape {data.shape[1:]}, "
                               f"the model expects {tuple(input_shape[1:])} (array shape N,C,H,W)")
    if len(data) == 0:
        raise CalibrationError(f"{path}: calibration data holds no samples")
    return data[:max_samples].astype(np.float32)


def load_labelled(source: str | Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """Held-out data from an .npz with inputs 'x' (N,C,H,W) and, when present, integer labels 'y'."""
    path = Path(source)
    x = load_calibration(path, input_shape, max_samples=2**31)
    if path.suffix != ".npz":
        return x, None
    with np.load(path, allow_pickle=False) as archive:
        if "y" not in archive.files:
            return x, None
        y = archive["y"]
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise CalibrationError(f"{path}: labels 'y' must be {len(x)} integers, found shape {y.shape} {y.dtype}")
    return x, y


def _read_array(path: Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CalibrationError(f"{path}: not a readable numpy file ({exc})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = loaded.files
            if len(keys) != 1 and "x" not in keys:
                raise CalibrationError(f"{path}: .npz holds {keys}; give one array or name the inputs 'x'")
            return loaded["x" if "x" in keys else keys[0]]
    return loaded


def _read_images(folder: Path, input_shape: tuple[int, ...], max_samples: int,
                 preprocessing: Preprocessing) -> np.ndarray:
    """Images resized to the input's H,W, grey or RGB by its channel count, then preprocessed."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_samples]
    if not files:
        raise CalibrationError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    channels, height, width = input_shape[1:]
    if channels not in (1, 3):
        raise CalibrationError(f"{folder}: image calibration needs a 1- or 3-channel input, model has {channels}")
    samples = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert("L" if channels == 1 else "RGB").resize((width, height))
                array = np.asarray(image, np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise CalibrationError(f"{file}: unreadable image ({exc})") from None
        samples.append(preprocessing.apply(array[None] if channels == 1 else array.transpose(2, 0, 1)))
    return np.stack(samples)
