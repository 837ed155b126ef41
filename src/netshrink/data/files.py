"""A user's calibration data from files (``netshrink compress --calibration PATH``).

What ``PATH`` may be, chosen by what it is and by its suffix:

- ``.npy``: one array ``(N, ...)``.
- ``.npz`` / ``.safetensors``: a single array, or arrays named ``inputs`` ``(N, ...)``
  and optionally ``labels`` ``(N,)`` (class indices).
- a folder of PNG/JPEG images: images directly in it (no labels), or one subfolder per
  class (labels are the indices of the sorted subfolder names). Decoded to
  ``(N, C, H, W)`` float32 in ``[0, 1]``, then ``(x - mean) / std`` per channel.
- ``.jsonl``: one JSON object per line; the sample is the object's ``text`` field.
- any other file: UTF-8 text, one sample per non-blank line.

Numeric inputs become float32 and are checked for NaN/Inf. NumPy files are read with
``allow_pickle=False``: a pickled array is refused, since loading one can run code.

>>> samples = load_calibration("images/", image_size=224, mean=[0.485, 0.456, 0.406],
...                            std=[0.229, 0.224, 0.225])
>>> calibration, held_out = split(len(samples), 1000, held_out=500, seed=0)
>>> model_batches = batches(samples, calibration, batch_size=64)   # [(64, 3, 224, 224), ...]
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open

from netshrink.errors import DatasetNotFoundError, InvalidInputError

__all__ = ["IMAGE_SUFFIXES", "Samples", "batches", "load_calibration", "load_labels", "split"]

#: Image files a folder is searched for (compared case-insensitively).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: The array names of a ``.npz`` / ``.safetensors`` file that holds several.
INPUTS, LABELS = "inputs", "labels"
_TORCH_INTS = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
               torch.uint64}
_GRAY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_FORMATS = ("a .npy, .npz or .safetensors file, a folder of .png/.jpg images, a .jsonl file or a text file "
            "with one sample per line")


@dataclass
class Samples:
    """Calibration samples read from one file or folder.

    Attributes:
        kind: ``"tensors"`` (NumPy/safetensors arrays), ``"images"`` (an image folder) or ``"text"``.
        inputs: ``(N, ...)`` float32 (``(N, C, H, W)`` for images), or N strings for text.
        labels: ``(N,)`` int64 class indices when the source has them, else None.
        classes: the class names of an image folder (sorted subfolder names), else None.
        source: the path read, for messages.
    """

    kind: str
    inputs: torch.Tensor | list[str]
    labels: torch.Tensor | None
    classes: list[str] | None
    source: str

    def __len__(self) -> int:
        return len(self.inputs)


# ---------------------------------------------------------------- entry points


def load_calibration(path: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     text_field: str | None = None, grayscale: bool | None = None) -> Samples:
    """Read calibration samples from ``path`` (see the module docstring for the formats).

    Args:
        path: a ``.npy``/``.npz``/``.safetensors`` file, a folder of images, a ``.jsonl``
            file or a text file.
        image_size: images only: resize every image (bilinear) to ``(height, width)``, or to
            a square for an int. Without it all images must share one size.
        mean, std: images only: one value per channel; pixels in ``[0, 1]`` become
            ``(x - mean) / std``.
        text_field: ``.jsonl`` only: the field that holds the text (default ``"text"``).
        grayscale: images only: True converts every image to one channel, False to RGB;
            None (default) keeps one channel when every image is grayscale, else RGB.

    Returns:
        :class:`Samples` with ``inputs`` ``(N, ...)`` float32 or N strings.

    Raises:
        DatasetNotFoundError: ``path`` does not exist.
        InvalidInputError: the content is unusable, or an option does not apply to it.
    """
    source = Path(path)
    if not source.exists():
        raise DatasetNotFoundError(f"calibration data {source} does not exist; pass {_FORMATS}")
    if source.is_dir():
        _refuse_options({"text_field": text_field}, source, "a .jsonl file")
        return _load_images(source, image_size, mean, std, grayscale)
    _refuse_options({"image_size": image_size, "mean": mean, "std": std, "grayscale": grayscale}, source,
                    "a folder of images")
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        return _load_jsonl(source, text_field or "text")
    _refuse_options({"text_field": text_field}, source, "a .jsonl file")
    readers = {".npy": _load_npy, ".npz": _load_npz, ".safetensors": _load_safetensors}
    return readers.get(suffix, _load_lines)(source)


def load_labels(path: str | os.PathLike, count: int) -> torch.Tensor:
    """Class labels for ``count`` samples: ``(count,)`` int64, from a ``.npy`` or ``.txt`` file.

    A ``.npy`` holds a 1-D integer array; a ``.txt`` one integer per line (blank lines are
    skipped). Labels are class indices, so they must be integers ``>= 0``.

    Raises:
        DatasetNotFoundError: ``path`` does not exist.
        InvalidInputError: another suffix, non-integer or negative labels, or a count
            other than ``count``.
    """
    source = Path(path)
    if not source.exists():
        raise DatasetNotFoundError(f"labels file {source} does not exist; pass a .npy file or a .txt file "
                                   "with one integer label per line")
    suffix = source.suffix.lower()
    if suffix == ".npy":
        return _labels(_read_npy(source), count, str(source))
    if suffix == ".txt":
        return _labels(np.array(_integer_lines(source), dtype=np.int64), count, str(source))
    raise InvalidInputError(f"labels file {source} has suffix {source.suffix!r}; write the labels as a .npy "
                            "array (numpy.save) or as a .txt file with one integer per line")


def split(n: int, calibration_size: int | None, held_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint random index sets ``(calibration, held_out)`` of ``range(n)``, both int64.

    A permutation of ``range(n)`` is drawn with a ``torch.Generator`` seeded with ``seed``,
    so the same arguments always give the same sets. Its first ``h`` indices are held out
    and the next ``calibration_size`` calibrate, where ``h = min(held_out, n // 2)``: at
    most half of the samples are ever held out, so a small file keeps at least half for
    calibration, and the held-out set does not depend on ``calibration_size``.
    ``calibration_size=None`` calibrates on every sample not held out.

    Raises:
        InvalidInputError: ``n < 1``, ``held_out < 0``, ``calibration_size < 1``, or
            ``calibration_size`` larger than the ``n - h`` samples left.
    """
    n = _integer(n, "the number of samples", 1)
    held = min(_integer(held_out, "held_out", 0), n // 2)
    available = n - held
    size = available if calibration_size is None else _integer(calibration_size, "calibration_size", 1)
    if size > available:
        fewer = ", or hold out fewer samples" if held else ""
        raise InvalidInputError(
            f"asked for {size} calibration samples but the data has {n} samples and {held} are held out, "
            f"leaving {available}; pass a calibration size of at most {available}{fewer}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_integer(seed, "seed")))
    return order[held:held + size], order[:held]


def batches(samples: Samples, indices: torch.Tensor, batch_size: int, tokenizer=None,
            max_length: int = 128) -> list:
    """The samples at ``indices``, in that order, cut into batches of at most ``batch_size``.

    Tensors and images give ``(B, ...)`` tensors. Text is tokenized batch by batch:
    ``tokenizer(texts, padding=True, truncation=True, max_length=max_length,
    return_tensors="pt")`` as a dict (``input_ids``, ``attention_mask`` ``(B, T)``, and
    ``token_type_ids`` when the tokenizer makes them).

    Raises:
        InvalidInputError: a bad ``batch_size``, ``indices`` that are empty, not 1-D
            integers or out of range, or text without a tokenizer.
    """
    batch_size = _integer(batch_size, "batch_size", 1)
    chunks = _checked_indices(indices, len(samples), samples.source).split(batch_size)
    if samples.kind != "text":
        return [samples.inputs[chunk] for chunk in chunks]
    if tokenizer is None:
        raise InvalidInputError(
            f"{samples.source} holds text, which needs the model's tokenizer to become batches; pass the "
            "tokenizer (e.g. transformers.AutoTokenizer.from_pretrained(model_dir))"
        )
    max_length = _integer(max_length, "max_length", 1)
    return [dict(tokenizer([samples.inputs[i] for i in chunk.tolist()], padding=True, truncation=True,
                           max_length=max_length, return_tensors="pt"))
            for chunk in chunks]


# ---------------------------------------------------------------- checks shared by the formats


def _refuse_options(options: dict, source: Path, applies_to: str) -> None:
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise InvalidInputError(
            f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} only to {applies_to}, not to "
            f"{source}; leave {'it' if len(given) == 1 else 'them'} out"
        )


def _integer(value, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidInputError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _checked_indices(indices: torch.Tensor, count: int, source: str) -> torch.Tensor:
    if not isinstance(indices, torch.Tensor) or indices.ndim != 1 or indices.dtype not in _TORCH_INTS:
        raise InvalidInputError("indices must be a 1-D integer tensor (as split() returns them)")
    if len(indices) == 0:
        raise InvalidInputError("no samples selected (indices is empty); pass the calibration indices from split()")
    if int(indices.min()) < 0 or int(indices.max()) >= count:
        raise InvalidInputError(
            f"indices run from {int(indices.min())} to {int(indices.max())} but {source} has {count} samples "
            f"(0..{count - 1}); take the indices from split({count}, ...)"
        )
    return indices.to(torch.int64)


def _numeric_kind(values: np.ndarray | torch.Tensor) -> str:
    """``"float"``, ``"int"``, ``"string"``, or the name of another dtype."""
    if isinstance(values, np.ndarray):
        kinds = {"f": "float", "i": "int", "u": "int", "U": "string", "S": "string"}
        return kinds.get(values.dtype.kind, values.dtype.name)
    if values.is_floating_point():
        return "float"
    return "int" if values.dtype in _TORCH_INTS else str(values.dtype).removeprefix("torch.")


def _inputs(values: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    """``(N, ...)`` float32 from a float or integer array, checked for NaN/Inf."""
    kind = _numeric_kind(values)
    if kind not in ("float", "int"):
        fix = ("for text, pass a text file with one sample per line" if kind == "string"
               else "convert them before saving, e.g. array.astype(numpy.float32)")
        raise InvalidInputError(f"{where} holds {kind} values; calibration inputs must be float or integer "
                                f"numbers: {fix}")
    if values.ndim == 0 or len(values) == 0:
        raise InvalidInputError(f"{where} has shape {tuple(values.shape)}; calibration inputs are (N, ...) with "
                                "one sample per row and at least one sample")
    if isinstance(values, np.ndarray):
        with np.errstate(over="ignore"):  # values beyond float32 become Inf, reported just below
            tensor = torch.from_numpy(np.asarray(values, dtype=np.float32))
    else:
        tensor = values.to(torch.float32)
    _check_finite(tensor, where)
    return tensor


def _check_finite(inputs: torch.Tensor, where: str) -> None:
    bad = ~torch.isfinite(inputs.reshape(len(inputs), -1))
    if bad.any():
        first = int(bad.any(dim=1).nonzero()[0, 0])
        raise InvalidInputError(
            f"{where} has {int(bad.sum())} NaN/Inf values (as float32), the first in sample {first}; "
            "clean or drop those samples before compressing"
        )


def _labels(values: np.ndarray | torch.Tensor, count: int, where: str) -> torch.Tensor:
    """``(count,)`` int64 class indices from a 1-D integer array."""
    kind = _numeric_kind(values)
    if kind != "int" or values.ndim != 1:
        raise InvalidInputError(f"labels in {where} are {kind} of shape {tuple(values.shape)}; labels are a 1-D "
                                "array of integer class indices, one per sample")
    if len(values) != count:
        raise InvalidInputError(f"{where} has {len(values)} labels but there are {count} samples; give exactly one "
                                "label per sample, in the same order")
    labels = torch.from_numpy(np.asarray(values, dtype=np.int64)) if isinstance(values, np.ndarray) \
        else values.to(torch.int64)
    if len(labels) and int(labels.min()) < 0:
        first = int((labels < 0).nonzero()[0, 0])
        raise InvalidInputError(f"{where} has negative label {int(labels[first])} (sample {first}); labels are "
                                "class indices 0, 1, 2, ...")
    return labels


def _pick(names: Sequence[str], source: Path) -> tuple[str, str | None]:
    """The names of the inputs array and of the labels array (or None) among ``names``."""
    keys = sorted(names)
    if len(keys) == 1 and keys[0] != LABELS:
        return keys[0], None
    if INPUTS in keys and set(keys) <= {INPUTS, LABELS}:
        return INPUTS, LABELS if LABELS in keys else None
    raise InvalidInputError(
        f"{source} holds arrays {keys}; expected a single array, or arrays named {INPUTS!r} (N, ...) and "
        f"optionally {LABELS!r} (N,); save them under those names, e.g. numpy.savez(path, inputs=x, labels=y)"
    )


def _tensor_samples(source: Path, arrays, names: Sequence[str]) -> Samples:
    """Samples from a file of named arrays; ``arrays(name)`` reads one."""
    inputs_name, labels_name = _pick(names, source)
    where = str(source) if len(names) == 1 else f"{source} ({inputs_name!r})"
    inputs = _inputs(arrays(inputs_name), where)
    labels = None if labels_name is None else _labels(arrays(labels_name), len(inputs), f"{source} ({LABELS!r})")
    return Samples("tensors", inputs, labels, None, str(source))


# ---------------------------------------------------------------- NumPy and safetensors


@contextlib.contextmanager
def _numpy_errors(source: Path):
    try:
        yield
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
            raise InvalidInputError(
                f"{source} holds a pickled (object) array; pickled arrays are refused because loading one can "
                "run arbitrary code. Save the inputs as numbers, e.g. numpy.save(path, x.astype(numpy.float32))"
            ) from exc
        raise InvalidInputError(f"{source} is not a readable NumPy file ({exc}); write it with numpy.save or "
                                "numpy.savez") from exc


def _read_npy(source: Path) -> np.ndarray:
    # format.read_array rather than np.load: np.load reports any non-NumPy file as pickled data.
    with _numpy_errors(source), source.open("rb") as file:
        return np.lib.format.read_array(file, allow_pickle=False)


def _load_npy(source: Path) -> Samples:
    return Samples("tensors", _inputs(_read_npy(source), str(source)), None, None, str(source))


def _load_npz(source: Path) -> Samples:
    if not zipfile.is_zipfile(source):
        raise InvalidInputError(f"{source} is not a .npz archive; write it with numpy.savez(path, inputs=x)")
    with _numpy_errors(source):
        archive = np.load(source, allow_pickle=False)

    def read(name: str) -> np.ndarray:
        with _numpy_errors(source):
            return archive[name]

    with archive:
        return _tensor_samples(source, read, archive.files)


def _load_safetensors(source: Path) -> Samples:
    try:
        with safe_open(source, framework="pt") as file:
            return _tensor_samples(source, file.get_tensor, list(file.keys()))
    except SafetensorError as exc:
        raise InvalidInputError(f"{source} is not a readable safetensors file ({exc}); write it with "
                                "safetensors.torch.save_file({'inputs': x}, path)") from exc


# ---------------------------------------------------------------- images


def _load_images(folder: Path, image_size, mean, std, grayscale: bool | None) -> Samples:
    files, labels, classes = _image_layout(folder)
    probes = [_probe(path) for path in files]
    if grayscale is None:
        grayscale = all(mode in _GRAY_MODES for mode, _ in probes)
    mode = "L" if grayscale else "RGB"
    height, width = _image_size(image_size) if image_size is not None else _common_size(files, probes)
    channels = 1 if grayscale else 3
    shift, scale = _channel_values(mean, "mean", channels, 0.0), _channel_values(std, "std", channels, 1.0)
    pixels = np.empty((len(files), channels, height, width), dtype=np.float32)
    for i, path in enumerate(files):
        pixels[i] = _decode(path, mode, (height, width))
    inputs = torch.from_numpy((pixels - shift) / scale)
    _check_finite(inputs, str(folder))
    return Samples("images", inputs, labels, classes, str(folder))


def _image_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES)


def _image_layout(folder: Path) -> tuple[list[Path], torch.Tensor | None, list[str] | None]:
    """``(files, labels (N,) int64 or None, classes or None)`` of an image folder."""
    direct = _image_files(folder)
    subfolders = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    per_class = {path.name: _image_files(path) for path in subfolders}
    if direct and any(per_class.values()):
        raise InvalidInputError(
            f"{folder} holds images both directly and in subfolders; put every image in a class subfolder "
            "(for labels), or all of them directly in the folder"
        )
    if direct:
        return direct, None, None
    if not any(per_class.values()):
        raise InvalidInputError(
            f"no images in {folder} or its subfolders (looked for {', '.join(IMAGE_SUFFIXES)}, any case); put "
            "the images directly in the folder, or in one subfolder per class"
        )
    empty = [name for name, paths in per_class.items() if not paths]
    if empty:
        raise InvalidInputError(
            f"class folder(s) {empty} in {folder} hold no images ({', '.join(IMAGE_SUFFIXES)}); every subfolder "
            "is a class, so remove them or add their images"
        )
    classes = list(per_class)
    files = [path for name in classes for path in per_class[name]]
    labels = torch.tensor([index for index, name in enumerate(classes) for _ in per_class[name]], dtype=torch.int64)
    return files, labels, classes


def _unreadable(path: Path, exc: Exception) -> InvalidInputError:
    return InvalidInputError(f"image {path} could not be read ({exc}); replace or remove the file")


def _probe(path: Path) -> tuple[str, tuple[int, int]]:
    """``(mode, (height, width))`` from the file's header."""
    try:
        with Image.open(path) as image:
            return image.mode, (image.height, image.width)
    except (OSError, ValueError, SyntaxError) as exc:
        raise _unreadable(path, exc) from exc


def _decode(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """``(C, H, W)`` float32 pixels in ``[0, 1]``, converted to ``mode`` and resized to ``size``."""
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if (image.height, image.width) != size:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as exc:
        raise _unreadable(path, exc) from exc
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _image_size(image_size) -> tuple[int, int]:
    pair = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else image_size
    positive = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
        not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1 for v in pair)
    if not positive:
        raise InvalidInputError(f"image_size must be a positive integer or a (height, width) pair of them, "
                                f"got {image_size!r}")
    return int(pair[0]), int(pair[1])


def _common_size(files: list[Path], probes: list[tuple[str, tuple[int, int]]]) -> tuple[int, int]:
    size = probes[0][1]
    for path, (_, other) in zip(files, probes):
        if other != size:
            raise InvalidInputError(
                f"{files[0]} is {size[0]}x{size[1]} but {path} is {other[0]}x{other[1]} (height x width); "
                "images must share one size: pass --image-size to resize them all"
            )
    return size


def _channel_values(values: Sequence[float] | None, name: str, channels: int, default: float) -> np.ndarray:
    """``(C, 1, 1)`` float32 of per-channel ``values`` (``default`` when None)."""
    if values is None:
        return np.full((channels, 1, 1), default, dtype=np.float32)
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(array) != channels:
        raise InvalidInputError(
            f"{name} has {len(array)} value(s) but the images have {channels} channel(s); give one value per "
            f"channel ({'grayscale' if channels == 1 else 'R, G, B'})"
        )
    if name == "std" and not (array > 0).all():
        raise InvalidInputError(f"std must be positive in every channel, got {array.tolist()}")
    return array.reshape(channels, 1, 1)


# ---------------------------------------------------------------- text


def _read_lines(source: Path, sample: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every non-blank line, the line ending stripped."""
    try:
        text = source.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{source} is not UTF-8 text (byte {exc.start} is invalid); save it as UTF-8 text with one {sample} "
            "per line"
        ) from exc
    lines = [(number, line.removesuffix("\r")) for number, line in enumerate(text.split("\n"), start=1)]
    kept = [(number, line) for number, line in lines if line.strip()]
    if not kept:
        raise InvalidInputError(f"{source} has no non-blank lines; write one {sample} per line")
    return kept


def _load_lines(source: Path) -> Samples:
    return Samples("text", [line for _, line in _read_lines(source, "calibration sample")], None, None, str(source))


def _load_jsonl(source: Path, field: str) -> Samples:
    texts = []
    for number, line in _read_lines(source, "JSON object"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{source} line {number} is not valid JSON ({exc.msg}, column {exc.colno}); "
                                    "a .jsonl file holds one JSON object per line") from exc
        if not isinstance(record, dict):
            raise InvalidInputError(f"{source} line {number} is a JSON {type(record).__name__}, not an object; "
                                    f'write one object per line, e.g. {{"{field}": "..."}}')
        if field not in record:
            raise InvalidInputError(f"{source} line {number} has no field {field!r} (its keys: {sorted(record)}); "
                                    "pass --text-field with the field that holds the text")
        if not isinstance(record[field], str):
            raise InvalidInputError(f"{source} line {number}: field {field!r} is a {type(record[field]).__name__}, "
                                    "not a string; the text field must hold the sample's text")
        texts.append(record[field])
    return Samples("text", texts, None, None, str(source))


def _integer_lines(source: Path) -> list[int]:
    values = []
    for number, line in _read_lines(source, "integer label"):
        try:
            values.append(int(line.strip()))
        except ValueError as exc:
            raise InvalidInputError(f"{source} line {number}: {line.strip()!r} is not an integer label; write one "
                                    "class index (0, 1, 2, ...) per line") from exc
    return values
