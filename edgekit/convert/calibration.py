"""Calibration data from a .npy/.npz array or a folder of images, checked against the model input."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.convert.preprocessing import image_input, to_nchw
from edgekit.errors import CalibrationError
from edgekit.formats.bundle import InputPreprocessing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def load_calibration(source: str | Path, input_shape: tuple[int, ...], max_samples: int,
                     preprocessing: InputPreprocessing | None = None, layout: str = "NCHW") -> np.ndarray:
    """Up to `max_samples` float32 samples matching `input_shape` (whose first dim is the batch).

    Arrays are taken as model inputs already; images go through `preprocessing` (its scale, mean and std, as
    the device applies them; by default pixels scaled to [0, 1]) into `layout`, the axis order of a 4-D
    `input_shape` (a torch model's N,C,H,W; a model file's own, NHWC for most .tflite files).
    """
    path = _existing(source)
    if path.is_dir():
        data = _read_images(path, input_shape, max_samples, preprocessing, layout)
    else:
        data = _read_array(path)
    if not np.issubdtype(data.dtype, np.number):
        raise CalibrationError(f"{path}: calibration array has dtype {data.dtype}, expected numbers")
    if data.shape[1:] != tuple(input_shape[1:]):
        order = f" (array shape {layout[0]},{','.join(layout[1:])})" if len(input_shape) == 4 else ""
        raise CalibrationError(f"{path}: calibration samples have shape {data.shape[1:]}, "
                               f"the model expects {tuple(input_shape[1:])}{order}")
    if len(data) == 0:
        raise CalibrationError(f"{path}: calibration data holds no samples")
    return data[:max_samples].astype(np.float32)


def load_labelled(source: str | Path, input_shape: tuple[int, ...],
                  layout: str = "NCHW") -> tuple[np.ndarray, np.ndarray | None]:
    """Held-out data from an .npz with inputs 'x' (in `layout`) and, when present, integer labels 'y'."""
    path = Path(source)
    x = load_calibration(path, input_shape, max_samples=2**31, layout=layout)
    if path.suffix != ".npz":
        return x, None
    with np.load(path, allow_pickle=False) as archive:
        if "y" not in archive.files:
            return x, None
        y = archive["y"]
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise CalibrationError(f"{path}: labels 'y' must be {len(x)} integers, found shape {y.shape} {y.dtype}")
    return x, y


def array_shape(source: str | Path) -> tuple[int, ...] | None:
    """The shape of the calibration array in `source` (N, then one sample's), None for a folder of images."""
    path = _existing(source)
    return None if path.is_dir() else tuple(_read_array(path).shape)


def _existing(source: str | Path) -> Path:
    """`source` as a Path to a folder or a .npy/.npz file; CalibrationError otherwise."""
    path = Path(source)
    if not path.exists():
        raise CalibrationError(f"{path}: no such file or folder")
    if not path.is_dir() and path.suffix not in (".npy", ".npz"):
        raise CalibrationError(f"{path}: calibration data must be a .npy/.npz file or a folder of images")
    return path


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
                 preprocessing: InputPreprocessing | None, layout: str) -> np.ndarray:
    """Images resized to the input's H,W, grey or RGB by its channel count, then preprocessed into `layout`."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_samples]
    if not files:
        raise CalibrationError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    if len(input_shape) != 4:
        raise CalibrationError(f"{folder}: image calibration needs a 4-D ({layout}) input, model has {input_shape}")
    nchw = to_nchw(input_shape, layout)
    channels, height, width = nchw[1:]
    if channels not in (1, 3):
        raise CalibrationError(f"{folder}: image calibration needs a 1- or 3-channel input, model has {channels}")
    prep = preprocessing or image_input(nchw)
    scale, mean, std = np.float32(prep.scale), np.array(prep.mean, np.float32), np.array(prep.std, np.float32)
    samples = []
    for file in files:
        try:
            with Image.open(file) as opened:
                pixels = np.asarray(opened.convert("L" if channels == 1 else "RGB").resize((width, height)),
                                    np.float32).reshape(height, width, channels)
        except (UnidentifiedImageError, OSError) as exc:
            raise CalibrationError(f"{file}: unreadable image ({exc})") from None
        sample = (pixels * scale - mean) / std
        samples.append(sample if layout == "NHWC" else sample.transpose(2, 0, 1))
    return np.stack(samples)
