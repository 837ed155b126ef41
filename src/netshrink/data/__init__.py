"""Data: the IDX reader, Fashion-MNIST from local files, calibration sets.

>>> from netshrink.data import fashion_mnist, calibration_images
>>> images, labels = fashion_mnist("test")       # (10000, 1, 28, 28) float32, (10000,) int64
>>> calib = calibration_images(1000, seed=0)     # (1000, 1, 28, 28) from the training split
"""

from netshrink.data.fashion_mnist import (
    CLASSES,
    DEFAULT_DATA_DIR,
    SPLITS,
    calibration_images,
    calibration_indices,
    data_dir,
    fashion_mnist,
)
from netshrink.data.idx import IDX_DTYPES, read_idx, write_idx

__all__ = [
    "CLASSES",
    "DEFAULT_DATA_DIR",
    "IDX_DTYPES",
    "SPLITS",
    "calibration_images",
    "calibration_indices",
    "data_dir",
    "fashion_mnist",
    "read_idx",
    "write_idx",
]
