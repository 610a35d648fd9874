"""Calibration data from a .npy/.npz array or a folder of images, checked against the model input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgekit.convert.preprocessing import image_input, to_nchw
from edgekit.errors import CalibrationError
from edgekit.formats.bundle import InputPreprocessing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def load_calibration(source: str | Path, input_shape: tuple[int, ...], max_samples: int,
                     preprocessing: InputPreprocessing | None = None, layout: str = "NCHW") -> np.ndarray:
    """Up to `max_samples` float32 samples matching `input_shape` (whose first dim is the batch).

    Images, and uint8 arrays (raw 0..255 pixels), go through `preprocessing` (its scale, mean and std, as the
    device applies them; by default pixels scaled to [0, 1]) into `layout`, the axis order of a 4-D
    `input_shape` (a torch model's N,C,H,W; a model file's own, NHWC for most .tflite files). Other arrays are
    taken as model inputs already: a warning when their values lie far outside what that preprocessing gives.
    """
    return load_described(source, input_shape, max_samples, preprocessing, layout)[0]


def load_described(source: str | Path, input_shape: tuple[int, ...], max_samples: int,
                   preprocessing: InputPreprocessing | None = None,
                   layout: str = "NCHW") -> tuple[np.ndarray, str]:
    """`load_calibration`'s samples and, for the report, where they came from and how they were preprocessed."""
    path = _existing(source)
    prep = preprocessing or (image_input(to_nchw(input_shape, layout)) if len(input_shape) == 4 else None)
    if path.is_dir():
        data = _read_images(path, input_shape, max_samples, prep, layout)
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
    return _as_input(path, data[:max_samples], prep, layout)


def _as_input(path: Path, data: np.ndarray, prep: InputPreprocessing | None, layout: str) -> tuple[np.ndarray, str]:
    """Images (preprocessed already) and uint8 pixels as the bundle preprocesses images; other values as they are
    (a warning when far outside what that preprocessing gives); with the description of what was done."""
    if prep is None:  # not an image input
        return data.astype(np.float32), f"from {path}"
    as_bundle = f"{_text(prep)}, as the bundle preprocesses images"
    if path.is_dir():
        return data, f"from {path} (images: {as_bundle})"
    if data.dtype == np.uint8:
        return _preprocessed(data, prep, layout), f"from {path} (uint8 pixels: {as_bundle})"
    _warn_if_out_of_range(path, data, prep)
    return data.astype(np.float32), f"from {path}"


def load_labelled(source: str | Path, input_shape: tuple[int, ...], layout: str = "NCHW",
                  preprocessing: InputPreprocessing | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Held-out data from an .npz with inputs 'x' (in `layout`; uint8 pixels get `preprocessing`, as
    `load_calibration` does) and, when present, integer labels 'y'."""
    path = Path(source)
    x = load_calibration(path, input_shape, max_samples=2**31, preprocessing=preprocessing, layout=layout)
    if path.suffix != ".npz":
        return x, None
    with np.load(path, allow_pickle=False) as archive:
        if "y" not in archive.files:
            return x, None
        y = archive["y"]
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise CalibrationError(f"{path}: labels 'y' must be {len(x)} integers, found shape {y.shape} {y.dtype}")
    return x, y


def _text(prep: InputPreprocessing) -> str:
    """'0..255 x 1/255', then '(x - mean) / std with ...' when it normalises: the preprocessing as a person reads it."""
    inverse = 1 / prep.scale
    scale = f"1/{round(inverse)}" if abs(inverse - round(inverse)) < 1e-6 else f"{prep.scale:g}"
    text = f"0..255 x {scale}"
    if any(m != 0 for m in prep.mean) or any(s != 1 for s in prep.std):
        text += f", then (x - mean) / std with mean {_values(prep.mean)} and std {_values(prep.std)}"
    return text


def _range(prep: InputPreprocessing) -> tuple[float, float]:
    """The least and the greatest value `prep` makes of 0..255 pixels, over all channels."""
    mean, std = np.array(prep.mean, np.float64), np.array(prep.std, np.float64)
    return float(((0 - mean) / std).min()), float(((255 * prep.scale - mean) / std).max())


def _values(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _preprocessed(pixels: np.ndarray, prep: InputPreprocessing, layout: str) -> np.ndarray:
    """Raw 0..255 pixels laid out `layout` as float32 input: x * scale, then (x - mean) / std per channel."""
    per_channel = (1, -1, 1, 1) if layout == "NCHW" else (1, 1, 1, -1)
    mean = np.array(prep.mean, np.float32).reshape(per_channel)
    std = np.array(prep.std, np.float32).reshape(per_channel)
    return (pixels.astype(np.float32) * np.float32(prep.scale) - mean) / std


def _warn_if_out_of_range(path: Path, data: np.ndarray, prep: InputPreprocessing) -> None:
    """A warning when `data` lies far (by more than the expected range's width) outside what `prep` makes of
    pixels: the bundle would turn a device's images into values unlike those the model was calibrated on."""
    low, high = _range(prep)
    found_low, found_high = float(data.min()), float(data.max())
    width = high - low
    if found_low < low - width or found_high > high + width:
        warnings.warn(f"{path}: values span [{found_low:.4g}, {found_high:.4g}], far outside [{low:.4g}, {high:.4g}] "
                      f"that the bundle's image preprocessing ({_text(prep)}) gives; pass raw pixels as a uint8 "
                      "array (they get that preprocessing), values preprocessed the same way, or --mean and --std "
                      "for your model's normalisation", stacklevel=1)  # edgekit's own: the CLI shows it


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
    """Images resized to the input's H,W, grey or RGB by its channel count, then preprocessed into `layout`
    (`preprocessing` is None only for an input that is not 4-D, which is refused)."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_samples]
    if not files:
        raise CalibrationError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    if len(input_shape) != 4 or preprocessing is None:
        raise CalibrationError(f"{folder}: image calibration needs a 4-D ({layout}) input, model has {input_shape}")
    nchw = to_nchw(input_shape, layout)
    channels, height, width = nchw[1:]
    if channels not in (1, 3):
        raise CalibrationError(f"{folder}: image calibration needs a 1- or 3-channel input, model has {channels}")
    samples = []
    for file in files:
        try:
            with Image.open(file) as opened:
                pixels = np.asarray(opened.convert("L" if channels == 1 else "RGB").resize((width, height)))
        except (UnidentifiedImageError, OSError) as exc:
            raise CalibrationError(f"{file}: unreadable image ({exc})") from None
        pixels = pixels.reshape(height, width, channels)
        samples.append(pixels if layout == "NHWC" else pixels.transpose(2, 0, 1))
    return _preprocessed(np.stack(samples), preprocessing, layout)
