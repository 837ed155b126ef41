import gzip

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from netshrink.data import (
    CLASSES,
    calibration_images,
    calibration_indices,
    data_dir,
    fashion_mnist,
    read_idx,
    write_idx,
)
from netshrink.errors import DatasetNotFoundError, InvalidInputError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def hand_written_idx(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    header = bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + payload


# ---------------------------------------------------------------- IDX reader


def test_read_hand_written_big_endian(tmp_path):
    path = tmp_path / "a.idx"
    path.write_bytes(hand_written_idx(0x0B, (2, 3), b"".join(v.to_bytes(2, "big", signed=True)
                                                              for v in [1, -2, 300, 4, 5, -32768])))
    array = read_idx(path)
    assert array.dtype == np.int16 and array.dtype.isnative and array.shape == (2, 3)
    assert array.tolist() == [[1, -2, 300], [4, 5, -32768]]
    array[0, 0] = 7  # writable, owns its memory


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_all_dtypes(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True).astype(dtype)
    else:
        array = rng.standard_normal((3, 4, 5)).astype(dtype)
    path = write_idx(tmp_path / f"x.idx{suffix}", array)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@settings(max_examples=40, deadline=None)
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(DTYPES),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    ),
    compress=st.booleans(),
)
def test_round_trip_property(tmp_path_factory, array, compress):
    path = tmp_path_factory.mktemp("idx") / "a.idx"
    write_idx(path, array, compress=compress)
    back = read_idx(path)
    assert back.shape == array.shape and back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)  # NaNs compare equal here


def test_gzip_detected_from_content_not_name(tmp_path):
    path = tmp_path / "labels"  # no .gz in the name
    path.write_bytes(gzip.compress(hand_written_idx(0x08, (3,), bytes([1, 2, 3]))))
    assert read_idx(path).tolist() == [1, 2, 3]


def test_bad_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x05")
    with pytest.raises(InvalidInputError, match=r"bad\.idx.*magic"):
        read_idx(path)


def test_bad_dtype_code(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(hand_written_idx(0x0A, (1,), b"\x05"))
    with pytest.raises(InvalidInputError, match=r"bad\.idx.*dtype code 0x0A"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_payload(tmp_path, compress):
    blob = hand_written_idx(0x0C, (2, 2), b"\x00" * 15)  # needs 16 bytes
    path = tmp_path / "short.idx"
    path.write_bytes(gzip.compress(blob) if compress else blob)
    with pytest.raises(InvalidInputError, match=r"short\.idx.*truncated"):
        read_idx(path)


def test_truncated_header_and_tiny_file(tmp_path):
    path = tmp_path / "h.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + (5).to_bytes(4, "big"))
    with pytest.raises(InvalidInputError, match="header"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(InvalidInputError, match="too short"):
        read_idx(path)


def test_trailing_bytes_are_corruption(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(hand_written_idx(0x08, (2,), b"\x01\x02\x03"))
    with pytest.raises(InvalidInputError, match="1 unexpected bytes"):
        read_idx(path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(hand_written_idx(0x08, (100,), bytes(100)))[:20])
    with pytest.raises(InvalidInputError, match=r"broken\.gz.*gzip"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


# ---------------------------------------------------------------- Fashion-MNIST


def test_test_split(fmnist_test):
    images, labels = fmnist_test
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 1000))
    assert len(CLASSES) == 10
    # pixel values are exactly k / 255
    sample = images[:50] * 255
    assert torch.allclose(sample, sample.round(), atol=1e-4)


def test_train_split_and_fresh_tensors(fmnist_test):
    images, labels = fashion_mnist("train")
    assert images.shape == (60000, 1, 28, 28) and labels.shape == (60000,)
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 6000))
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    images.zero_()
    labels.fill_(3)
    again_images, again_labels = fashion_mnist("train")  # the cache was not corrupted
    assert float(again_images.max()) == 1.0 and len(again_labels.unique()) == 10


def test_bad_split():
    with pytest.raises(InvalidInputError, match="'validation'.*'train' or 'test'"):
        fashion_mnist("validation")


def test_missing_dataset_message(tmp_path, monkeypatch):
    monkeypatch.setenv("NETSHRINK_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(DatasetNotFoundError) as caught:
        fashion_mnist("test")
    message = str(caught.value)
    assert str(tmp_path) in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "NETSHRINK_DATA" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_custom_folder_uncompressed_and_gz_names(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 28, 28)).astype(np.uint8)
    labels = np.array([0, 1, 2, 9, 4, 5, 6], dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    monkeypatch.setenv("NETSHRINK_DATA", str(tmp_path))
    x, y = fashion_mnist("test")
    assert x.shape == (7, 1, 28, 28)
    assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 255)
    assert y.tolist() == labels.tolist()


def test_mismatched_files_are_rejected(tmp_path, monkeypatch):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((4,), np.uint8))
    monkeypatch.setenv("NETSHRINK_DATA", str(tmp_path))
    with pytest.raises(InvalidInputError, match="3 images but .* 4 labels"):
        fashion_mnist("test")


# ---------------------------------------------------------------- calibration


def test_calibration_deterministic_and_from_train(fmnist_test):
    a = calibration_images(300, seed=0)
    b = calibration_images(300, seed=0)
    c = calibration_images(300, seed=1)
    assert a.shape == (300, 1, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    index = calibration_indices(300, seed=0)
    assert index.dtype == torch.int64 and len(index.unique()) == 300  # without replacement
    train_images, _ = fashion_mnist("train")
    assert torch.equal(a, train_images[index])
    # a larger set extends the smaller one
    assert torch.equal(calibration_indices(500, seed=0)[:300], index)


@pytest.mark.parametrize("size", [0, -1, 60001, 2.5, True, "10"])
def test_calibration_bad_size(fmnist_test, size):
    with pytest.raises(InvalidInputError, match="calibration size"):
        calibration_images(size)


def test_calibration_full_size(fmnist_test):
    index = calibration_indices(60000, seed=3)
    assert torch.equal(index.sort().values, torch.arange(60000))


def test_limit(fmnist_test):
    images, labels = fashion_mnist("test", limit=5)
    assert images.shape == (5, 1, 28, 28) and torch.equal(labels, fmnist_test[1][:5])
    with pytest.raises(InvalidInputError, match="limit"):
        fashion_mnist("test", limit=0)
