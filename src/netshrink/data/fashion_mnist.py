"""Fashion-MNIST from local IDX files (Debian's ``dataset-fashion-mnist``).

Nothing is ever downloaded. The folder is ``$NETSHRINK_DATA`` when set, else
``/usr/share/datasets/fashion-mnist/`` where ``sudo apt-get install
dataset-fashion-mnist`` puts the four files. Gzipped (``*.gz``) and uncompressed
files are accepted, with the original ``train-images-idx3-ubyte`` names or the
``train-images.idx3-ubyte`` spelling some mirrors use.

The decoded uint8 arrays are cached in-process (keyed on folder and split), so
repeated calls only pay for the float conversion; every call returns new tensors.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from netshrink.data.idx import read_idx
from netshrink.errors import DatasetNotFoundError, InvalidInputError

__all__ = [
    "DEFAULT_DATA_DIR",
    "SPLITS",
    "CLASSES",
    "data_dir",
    "fashion_mnist",
    "calibration_indices",
    "calibration_images",
]

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test")
#: Class names in label order 0..9.
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def data_dir() -> Path:
    """The folder searched for the IDX files: ``$NETSHRINK_DATA`` or the Debian location."""
    env = os.environ.get("NETSHRINK_DATA")
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR


def _candidates(stem: str) -> list[str]:
    dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte
    return [stem + ".gz", stem, dotted + ".gz", dotted]


def _find(folder: Path, stem: str) -> Path:
    for name in _candidates(stem):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    source = "$NETSHRINK_DATA" if os.environ.get("NETSHRINK_DATA") else "the default location"
    raise DatasetNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {folder} ({source}). "
        "Install the dataset with `sudo apt-get install dataset-fashion-mnist` "
        f"(it goes to {DEFAULT_DATA_DIR}/), or set NETSHRINK_DATA to a folder holding "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (gzipped or not)."
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidInputError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'.")


@functools.cache
def _load_arrays(folder: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded (images uint8 (N, 28, 28), labels uint8 (N,)), cached; never handed out."""
    image_path = _find(Path(folder), _STEMS[split][0])
    label_path = _find(Path(folder), _STEMS[split][1])
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InvalidInputError(
            f"{image_path} holds {images.dtype} of shape {images.shape}, expected uint8 (N, 28, 28); "
            "it is not a Fashion-MNIST image file."
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise InvalidInputError(
            f"{label_path} holds {labels.dtype} of shape {labels.shape}, expected uint8 (N,); "
            "it is not a Fashion-MNIST label file."
        )
    if len(images) != len(labels):
        raise InvalidInputError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels; "
            "the two files do not belong together."
        )
    if len(labels) and int(labels.max()) > 9:
        raise InvalidInputError(f"{label_path} has label {int(labels.max())}; Fashion-MNIST labels are 0..9.")
    return torch.from_numpy(images), torch.from_numpy(labels)


def _arrays(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_split(split)
    return _load_arrays(str(data_dir().resolve()), split)


def _to_tensors(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # .to() copies, so the cached uint8 tensors never reach a caller.
    x = images.to(torch.float32).div_(255.0).unsqueeze_(1)
    y = labels.to(torch.int64)
    return x, y


def fashion_mnist(split: str, *, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a Fashion-MNIST split.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        limit: return only the first ``limit`` images (default: all).

    Returns:
        ``(images, labels)`` with images: (N, 1, 28, 28) float32 in [0, 1]
        (pixel / 255) and labels: (N,) int64 in 0..9. Fresh tensors on each call.

    Raises:
        InvalidInputError: unknown split, or files that are not Fashion-MNIST.
        DatasetNotFoundError: the files are not in :func:`data_dir`.
    """
    images, labels = _arrays(split)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise InvalidInputError(f"limit must be a positive integer or None, got {limit!r}.")
        images, labels = images[:limit], labels[:limit]
    return _to_tensors(images, labels)


def _check_size(size: object, available: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise InvalidInputError(f"calibration size must be an integer, got {size!r}.")
    if not 1 <= int(size) <= available:
        raise InvalidInputError(
            f"calibration size must be between 1 and {available} (the training split), got {size}."
        )
    return int(size)


def calibration_indices(size: int, seed: int = 0) -> torch.Tensor:
    """Indices into the training split of a calibration set: (size,) int64, distinct.

    Drawn without replacement with ``torch.randperm`` under a ``torch.Generator``
    seeded with ``seed``, so the same (size, seed) always gives the same indices,
    and a larger size extends the smaller one's set (same permutation prefix).
    """
    _, labels = _arrays("train")
    size = _check_size(size, len(labels))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidInputError(f"seed must be an integer, got {seed!r}.")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(len(labels), generator=generator)[:size]


def calibration_images(size: int, seed: int = 0) -> torch.Tensor:
    """A deterministic calibration (compression) set from the training split.

    Returns (size, 1, 28, 28) float32 in [0, 1]: the training images at
    :func:`calibration_indices` ``(size, seed)``. ``size`` must be in 1..60000.
    Accuracy is measured on the test split, which calibration never touches.
    """
    index = calibration_indices(size, seed)
    images, labels = _arrays("train")
    return _to_tensors(images[index], labels[index])[0]
