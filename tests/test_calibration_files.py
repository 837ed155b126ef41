"""Calibration data from a user's files: every format round-trips, and bad files get specific errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

from netshrink.data.files import Samples, batches, load_calibration, load_labels, split
from netshrink.errors import DatasetNotFoundError, InvalidInputError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "a", "mat", "dog", "ran"]


def pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def write_image(path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


def decoded(path, mode: str) -> np.ndarray:
    """(C, H, W) float32 in [0, 1], decoded by PIL independently of the loader."""
    with Image.open(path) as image:
        array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


@pytest.fixture
def tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return transformers.BertTokenizerFast.from_pretrained(folder)


# ---------------------------------------------------------------- arrays


def test_npy_round_trip(tmp_path):
    array = np.random.default_rng(0).standard_normal((6, 3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", array)
    samples = load_calibration(tmp_path / "x.npy")
    assert isinstance(samples, Samples) and samples.kind == "tensors" and len(samples) == 6
    assert samples.inputs.dtype == torch.float32
    assert np.array_equal(samples.inputs.numpy(), array)
    assert samples.labels is None and samples.classes is None and samples.source == str(tmp_path / "x.npy")


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int64, np.uint8, ">f4"])
def test_npy_numbers_become_float32(tmp_path, dtype):
    array = (np.arange(24).reshape(4, 6) * 3).astype(dtype)
    np.save(tmp_path / "x.npy", array)
    inputs = load_calibration(tmp_path / "x.npy").inputs
    assert inputs.dtype == torch.float32 and np.array_equal(inputs.numpy(), array.astype(np.float32))


def test_npz_single_array_and_inputs_with_labels(tmp_path):
    x = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32)
    y = np.array([0, 2, 1, 2, 0], dtype=np.int32)
    np.savez(tmp_path / "one.npz", anything=x)
    np.savez(tmp_path / "both.npz", inputs=x, labels=y)
    assert np.array_equal(load_calibration(tmp_path / "one.npz").inputs.numpy(), x)
    samples = load_calibration(tmp_path / "both.npz")
    assert np.array_equal(samples.inputs.numpy(), x)
    assert samples.labels.dtype == torch.int64 and samples.labels.tolist() == y.tolist()


def test_safetensors_single_array_and_inputs_with_labels(tmp_path):
    x = np.random.default_rng(2).standard_normal((4, 2, 3)).astype(np.float32)
    y = np.array([3, 1, 0, 3], dtype=np.int64)
    save_file({"pixels": x}, str(tmp_path / "one.safetensors"))
    save_file({"inputs": x, "labels": y}, str(tmp_path / "both.safetensors"))
    assert np.array_equal(load_calibration(tmp_path / "one.safetensors").inputs.numpy(), x)
    samples = load_calibration(tmp_path / "both.safetensors")
    assert samples.kind == "tensors" and np.array_equal(samples.inputs.numpy(), x)
    assert samples.labels.dtype == torch.int64 and samples.labels.tolist() == y.tolist()


def test_tensor_batches_follow_the_indices(tmp_path):
    array = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    np.save(tmp_path / "x.npy", array)
    samples = load_calibration(tmp_path / "x.npy")
    indices = torch.tensor([7, 2, 9, 0, 4])
    pieces = batches(samples, indices, batch_size=2)
    assert [tuple(piece.shape) for piece in pieces] == [(2, 3), (2, 3), (1, 3)]
    assert np.array_equal(torch.cat(pieces).numpy(), array[indices.numpy()])


# ---------------------------------------------------------------- images


def test_image_folder_with_class_subfolders(tmp_path):
    written = {("dog", "b.png"): pixels(0, (4, 5, 3)), ("cat", "a.png"): pixels(1, (4, 5, 3)),
               ("cat", "c.PNG"): pixels(2, (4, 5, 3)), ("dog", "a.png"): pixels(3, (4, 5, 3))}
    for (label, name), array in written.items():
        write_image(tmp_path / label / name, array)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    samples = load_calibration(tmp_path)
    assert samples.kind == "images" and samples.classes == ["cat", "dog"]
    assert samples.labels.dtype == torch.int64 and samples.labels.tolist() == [0, 0, 1, 1]
    order = [("cat", "a.png"), ("cat", "c.PNG"), ("dog", "a.png"), ("dog", "b.png")]
    expected = np.stack([written[key].transpose(2, 0, 1) for key in order]).astype(np.float32) / 255.0
    assert samples.inputs.shape == (4, 3, 4, 5) and samples.inputs.dtype == torch.float32
    assert np.array_equal(samples.inputs.numpy(), expected)


def test_images_directly_in_the_folder_have_no_labels(tmp_path):
    write_image(tmp_path / "b.png", pixels(0, (3, 3, 3)))
    write_image(tmp_path / "a.JPG", pixels(1, (3, 3, 3)))
    samples = load_calibration(tmp_path)
    assert samples.labels is None and samples.classes is None and len(samples) == 2
    expected = np.stack([decoded(tmp_path / "a.JPG", "RGB"), decoded(tmp_path / "b.png", "RGB")])
    assert np.array_equal(samples.inputs.numpy(), expected)


def test_resize_and_mean_std_match_a_hand_computation(tmp_path):
    write_image(tmp_path / "a.png", pixels(0, (9, 6, 3)))
    write_image(tmp_path / "b.jpeg", pixels(1, (5, 11, 3)))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    samples = load_calibration(tmp_path, image_size=(4, 7), mean=mean, std=std)
    assert samples.inputs.shape == (2, 3, 4, 7)
    for row, name in enumerate(["a.png", "b.jpeg"]):
        with Image.open(tmp_path / name) as image:
            resized = np.asarray(image.convert("RGB").resize((7, 4), Image.Resampling.BILINEAR), dtype=np.float64)
        expected = (resized / 255.0 - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(samples.inputs[row].numpy(), expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    assert load_calibration(tmp_path, image_size=3).inputs.shape == (2, 3, 3, 3)


def test_grayscale_colour_and_mixed_folders(tmp_path):
    gray, colour = pixels(0, (4, 4)), pixels(1, (4, 4, 4))
    write_image(tmp_path / "gray" / "g.png", gray)
    write_image(tmp_path / "gray" / "h.png", gray[::-1].copy())
    gray_only = load_calibration(tmp_path / "gray")
    assert gray_only.inputs.shape == (2, 1, 4, 4)
    assert np.array_equal(gray_only.inputs[0, 0].numpy(), gray.astype(np.float32) / 255.0)
    assert load_calibration(tmp_path / "gray", grayscale=False).inputs.shape == (2, 3, 4, 4)

    write_image(tmp_path / "mixed" / "g.png", gray)
    write_image(tmp_path / "mixed" / "rgba.png", colour)  # RGBA: the alpha channel is dropped
    write_image(tmp_path / "mixed" / "palette.png", colour[..., :3], mode="P")
    mixed = load_calibration(tmp_path / "mixed")
    assert mixed.inputs.shape == (3, 3, 4, 4)
    files = ["g.png", "palette.png", "rgba.png"]
    assert np.array_equal(mixed.inputs.numpy(), np.stack([decoded(tmp_path / "mixed" / f, "RGB") for f in files]))
    assert np.array_equal(mixed.inputs[0, 1].numpy(), gray.astype(np.float32) / 255.0)
    forced = load_calibration(tmp_path / "mixed", grayscale=True)
    assert np.array_equal(forced.inputs.numpy(), np.stack([decoded(tmp_path / "mixed" / f, "L") for f in files]))


def test_mean_and_std_need_one_value_per_channel(tmp_path):
    write_image(tmp_path / "g.png", pixels(0, (4, 4)))
    with pytest.raises(InvalidInputError, match=r"mean has 3 value\(s\) but the images have 1 channel"):
        load_calibration(tmp_path, mean=[0.5, 0.5, 0.5])
    with pytest.raises(InvalidInputError, match="std must be positive"):
        load_calibration(tmp_path, std=[0.0])
    grayscale = load_calibration(tmp_path, mean=[0.5], std=[0.25])
    np.testing.assert_allclose(grayscale.inputs[0].numpy(), (decoded(tmp_path / "g.png", "L") - 0.5) / 0.25, rtol=1e-6)


# ---------------------------------------------------------------- text


def test_text_file_one_sample_per_non_blank_line(tmp_path):
    (tmp_path / "texts.txt").write_bytes("the cat sat\r\n\n  a dog ran  \n   \nnaïve café\n".encode())
    samples = load_calibration(tmp_path / "texts.txt")
    assert samples.kind == "text" and samples.labels is None
    assert samples.inputs == ["the cat sat", "  a dog ran  ", "naïve café"]


def test_jsonl_with_the_default_and_a_chosen_field(tmp_path):
    records = [{"text": "the cat", "body": "a dog ran", "id": 1}, {"text": "on a mat", "body": "the mat"}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert load_calibration(tmp_path / "data.jsonl").inputs == ["the cat", "on a mat"]
    assert load_calibration(tmp_path / "data.jsonl", text_field="body").inputs == ["a dog ran", "the mat"]


def test_text_batches_are_tokenized_with_padding_marked(tmp_path, tokenizer):
    texts = ["the cat", "the cat sat on a mat", "a dog", "the dog ran on the mat the cat sat"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    samples = load_calibration(tmp_path / "texts.txt")
    pieces = batches(samples, torch.tensor([0, 1, 2, 3]), batch_size=2, tokenizer=tokenizer, max_length=8)
    assert len(pieces) == 2 and all(isinstance(piece, dict) for piece in pieces)
    first, second = pieces
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids"}
    # "the cat" is [CLS] the cat [SEP] then padding; "the cat sat on a mat" fills all 8 positions.
    assert first["input_ids"].tolist() == [[2, 5, 6, 3, 0, 0, 0, 0], [2, 5, 6, 7, 8, 9, 10, 3]]
    assert first["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8]
    assert second["input_ids"].shape == (2, 8)  # the long sentence is truncated to max_length
    assert second["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert (second["input_ids"][second["attention_mask"] == 0] == 0).all()


def test_text_without_a_tokenizer(tmp_path):
    (tmp_path / "texts.txt").write_text("the cat\n")
    with pytest.raises(InvalidInputError, match="holds text, which needs the model's tokenizer"):
        batches(load_calibration(tmp_path / "texts.txt"), torch.tensor([0]), batch_size=4)


# ---------------------------------------------------------------- split and labels


def test_split_is_reproducible_disjoint_and_sized():
    calibration, held_out = split(100, 30, held_out=20, seed=3)
    again = split(100, 30, held_out=20, seed=3)
    assert torch.equal(calibration, again[0]) and torch.equal(held_out, again[1])
    assert calibration.dtype == held_out.dtype == torch.int64
    assert len(calibration) == 30 and len(held_out) == 20
    assert not set(calibration.tolist()) & set(held_out.tolist())
    assert all(0 <= i < 100 for i in calibration.tolist() + held_out.tolist())
    other, other_held = split(100, 30, held_out=20, seed=4)
    assert not torch.equal(calibration, other) and not torch.equal(held_out, other_held)
    # The held-out set does not depend on the calibration size.
    assert torch.equal(split(100, 50, held_out=20, seed=3)[1], held_out)


def test_split_defaults_and_the_held_out_cap():
    calibration, held_out = split(10, None, held_out=3, seed=0)
    assert len(calibration) == 7 and sorted(calibration.tolist() + held_out.tolist()) == list(range(10))
    calibration, held_out = split(10, None, held_out=1000, seed=0)  # at most half is held out
    assert len(held_out) == 5 and len(calibration) == 5
    calibration, held_out = split(1, None, held_out=1, seed=0)
    assert calibration.tolist() == [0] and held_out.tolist() == []


def test_load_labels_from_npy_and_txt(tmp_path):
    np.save(tmp_path / "labels.npy", np.array([2, 0, 1], dtype=np.uint8))
    (tmp_path / "labels.txt").write_text("2\n0\n 1 \n\n")
    for name in ["labels.npy", "labels.txt"]:
        labels = load_labels(tmp_path / name, 3)
        assert labels.dtype == torch.int64 and labels.tolist() == [2, 0, 1]


# ---------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"does not exist; pass a \.npy, \.npz or \.safetensors file"):
        load_calibration(tmp_path / "nothing.npy")
    with pytest.raises(FileNotFoundError, match="labels file .* does not exist"):
        load_labels(tmp_path / "nothing.txt", 3)


def test_pickled_object_arrays_are_refused(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "objects.npz", inputs=np.array([[1.0], None], dtype=object))
    for name in ["objects.npy", "objects.npz"]:
        with pytest.raises(InvalidInputError, match=r"pickled \(object\) array; pickled arrays are refused"):
            load_calibration(tmp_path / name)


def test_a_file_that_is_not_numpy(tmp_path):
    (tmp_path / "x.npy").write_text("hello")
    (tmp_path / "x.npz").write_text("hello")
    (tmp_path / "x.safetensors").write_text("hello")
    with pytest.raises(InvalidInputError, match="is not a readable NumPy file"):
        load_calibration(tmp_path / "x.npy")
    with pytest.raises(InvalidInputError, match=r"is not a \.npz archive"):
        load_calibration(tmp_path / "x.npz")
    with pytest.raises(InvalidInputError, match="is not a readable safetensors file"):
        load_calibration(tmp_path / "x.safetensors")


@pytest.mark.parametrize(("array", "message"), [
    (np.array([[True, False]]), r"holds bool values; .* e\.g\. array\.astype\(numpy\.float32\)"),
    (np.array([[1 + 2j]]), r"holds complex128 values; calibration inputs must be float or integer"),
    (np.array(["a cat", "a dog"]), r"holds string values; .* for text, pass a text file"),
])
def test_wrong_dtype(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(InvalidInputError, match=message):
        load_calibration(tmp_path / "x.npy")


def test_wrong_dtype_in_safetensors(tmp_path):
    save_file({"inputs": np.array([[True], [False]])}, str(tmp_path / "x.safetensors"))
    with pytest.raises(InvalidInputError, match="holds bool values"):
        load_calibration(tmp_path / "x.safetensors")


def test_scalar_and_empty_arrays(tmp_path):
    np.save(tmp_path / "scalar.npy", np.float32(3.0))
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), dtype=np.float32))
    for name, shape in [("scalar.npy", r"\(\)"), ("empty.npy", r"\(0, 4\)")]:
        with pytest.raises(InvalidInputError, match=rf"has shape {shape}; calibration inputs are \(N, \.\.\.\)"):
            load_calibration(tmp_path / name)


def test_nan_and_inf(tmp_path):
    array = np.zeros((5, 2, 2), dtype=np.float32)
    array[2, 0, 1], array[4, 1, 1], array[4, 0, 0] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(InvalidInputError, match=r"has 3 NaN/Inf values \(as float32\), the first in sample 2"):
        load_calibration(tmp_path / "x.npy")
    np.save(tmp_path / "big.npy", np.array([1.0, 1e300]))  # overflows float32
    with pytest.raises(InvalidInputError, match="has 1 NaN/Inf values .* the first in sample 1"):
        load_calibration(tmp_path / "big.npy")


def test_ambiguous_array_names(tmp_path):
    x = np.zeros((2, 3), dtype=np.float32)
    np.savez(tmp_path / "x.npz", images=x, targets=np.zeros(2, dtype=np.int64))
    save_file({"a": x, "b": x}, str(tmp_path / "x.safetensors"))
    np.savez(tmp_path / "labels_only.npz", labels=np.zeros(2, dtype=np.int64))
    for name, keys in [("x.npz", r"\['images', 'targets'\]"), ("x.safetensors", r"\['a', 'b'\]"),
                       ("labels_only.npz", r"\['labels'\]")]:
        with pytest.raises(InvalidInputError, match=rf"holds arrays {keys}; expected a single array, or arrays "
                                                    r"named 'inputs' \(N, \.\.\.\) and optionally 'labels'"):
            load_calibration(tmp_path / name)


def test_labels_in_an_archive_must_fit_the_inputs(tmp_path):
    x = np.zeros((3, 2), dtype=np.float32)
    np.savez(tmp_path / "count.npz", inputs=x, labels=np.array([0, 1]))
    np.savez(tmp_path / "float.npz", inputs=x, labels=np.array([0.0, 1.0, 2.0]))
    with pytest.raises(InvalidInputError, match="has 2 labels but there are 3 samples"):
        load_calibration(tmp_path / "count.npz")
    with pytest.raises(InvalidInputError, match=r"are float of shape \(3,\); labels are a 1-D array of integer"):
        load_calibration(tmp_path / "float.npz")


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    (tmp_path / "cat").mkdir()
    with pytest.raises(InvalidInputError, match=r"no images in .* \(looked for \.png, \.jpg, \.jpeg, any case\)"):
        load_calibration(tmp_path)


def test_an_empty_class_folder_and_a_mixed_layout(tmp_path):
    write_image(tmp_path / "cat" / "a.png", pixels(0, (3, 3)))
    (tmp_path / "dog").mkdir()
    with pytest.raises(InvalidInputError, match=r"class folder\(s\) \['dog'\] in .* hold no images"):
        load_calibration(tmp_path)
    write_image(tmp_path / "loose.png", pixels(1, (3, 3)))
    with pytest.raises(InvalidInputError, match="holds images both directly and in subfolders"):
        load_calibration(tmp_path)


def test_unreadable_image(tmp_path):
    write_image(tmp_path / "good.png", pixels(0, (4, 4, 3)))
    (tmp_path / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(InvalidInputError, match=r"image .*broken\.jpg could not be read .* replace or remove"):
        load_calibration(tmp_path)
    (tmp_path / "broken.jpg").unlink()
    whole = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidInputError, match=r"image .*truncated\.png could not be read"):
        load_calibration(tmp_path)


def test_differing_sizes_without_image_size(tmp_path):
    write_image(tmp_path / "a.png", pixels(0, (4, 5, 3)))
    write_image(tmp_path / "b.png", pixels(1, (6, 5, 3)))
    with pytest.raises(InvalidInputError, match=r"a\.png is 4x5 but .*b\.png is 6x5 \(height x width\); .* "
                                                r"pass --image-size"):
        load_calibration(tmp_path)
    assert load_calibration(tmp_path, image_size=(4, 5)).inputs.shape == (2, 3, 4, 5)


def test_bad_image_size(tmp_path):
    write_image(tmp_path / "a.png", pixels(0, (4, 4)))
    for bad in [0, (3,), (3, -1), 2.5]:
        with pytest.raises(InvalidInputError, match="image_size must be a positive integer or a"):
            load_calibration(tmp_path, image_size=bad)


def test_options_that_do_not_apply(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(InvalidInputError, match=r"image_size, mean apply only to a folder of images"):
        load_calibration(tmp_path / "x.npy", image_size=4, mean=[0.5])
    with pytest.raises(InvalidInputError, match=r"text_field applies only to a \.jsonl file"):
        load_calibration(tmp_path / "x.npy", text_field="body")


def test_empty_text_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    for name in ["empty.txt", "blank.txt"]:
        with pytest.raises(InvalidInputError, match="has no non-blank lines; write one calibration sample per line"):
            load_calibration(tmp_path / name)


def test_text_that_is_not_utf8(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"is not UTF-8 text \(byte 3 is invalid\); save it as UTF-8"):
        load_calibration(tmp_path / "latin1.txt")


def test_bad_jsonl_line(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"text": "the cat"}\n\n{"text": "a dog"\n')
    with pytest.raises(InvalidInputError, match=r"line 3 is not valid JSON .* one JSON object per line"):
        load_calibration(tmp_path / "data.jsonl")
    (tmp_path / "data.jsonl").write_text('{"text": "the cat"}\n["a dog"]\n')
    with pytest.raises(InvalidInputError, match="line 2 is a JSON list, not an object"):
        load_calibration(tmp_path / "data.jsonl")
    (tmp_path / "data.jsonl").write_text('{"text": 7}\n')
    with pytest.raises(InvalidInputError, match="line 1: field 'text' is a int, not a string"):
        load_calibration(tmp_path / "data.jsonl")


def test_missing_jsonl_field(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"text": "the cat"}\n{"body": "a dog", "id": 2}\n')
    with pytest.raises(InvalidInputError, match=r"line 2 has no field 'text' \(its keys: \['body', 'id'\]\); "
                                                "pass --text-field"):
        load_calibration(tmp_path / "data.jsonl")


def test_calibration_size_too_large_or_too_small():
    with pytest.raises(InvalidInputError, match=r"asked for 90 calibration samples but the data has 100 samples "
                                                r"and 20 are held out, leaving 80; pass a calibration size of at "
                                                r"most 80"):
        split(100, 90, held_out=20, seed=0)
    with pytest.raises(InvalidInputError, match="calibration_size must be at least 1, got 0"):
        split(100, 0, held_out=20, seed=0)
    with pytest.raises(InvalidInputError, match="held_out must be at least 0, got -1"):
        split(100, 10, held_out=-1, seed=0)


def test_label_count_mismatch(tmp_path):
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 1]))
    (tmp_path / "labels.txt").write_text("0\n1\n")
    with pytest.raises(InvalidInputError, match="has 4 labels but there are 3 samples; give exactly one label"):
        load_labels(tmp_path / "labels.npy", 3)
    with pytest.raises(InvalidInputError, match="has 2 labels but there are 3 samples"):
        load_labels(tmp_path / "labels.txt", 3)


def test_labels_that_are_not_class_indices(tmp_path):
    (tmp_path / "float.txt").write_text("0\n1.5\n")
    np.save(tmp_path / "float.npy", np.array([0.0, 1.0]))
    np.save(tmp_path / "negative.npy", np.array([0, -3]))
    (tmp_path / "labels.csv").write_text("0,1\n")
    with pytest.raises(InvalidInputError, match=r"line 2: '1\.5' is not an integer label"):
        load_labels(tmp_path / "float.txt", 2)
    with pytest.raises(InvalidInputError, match=r"are float of shape \(2,\)"):
        load_labels(tmp_path / "float.npy", 2)
    with pytest.raises(InvalidInputError, match=r"negative label -3 \(sample 1\); labels are class indices"):
        load_labels(tmp_path / "negative.npy", 2)
    with pytest.raises(InvalidInputError, match=r"has suffix '\.csv'; write the labels as a \.npy"):
        load_labels(tmp_path / "labels.csv", 2)


def test_bad_batch_arguments(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 2), dtype=np.float32))
    samples = load_calibration(tmp_path / "x.npy")
    with pytest.raises(InvalidInputError, match=r"indices run from 0 to 4 but .* has 4 samples \(0\.\.3\)"):
        batches(samples, torch.tensor([0, 4]), batch_size=2)
    with pytest.raises(InvalidInputError, match="indices is empty"):
        batches(samples, torch.tensor([], dtype=torch.int64), batch_size=2)
    with pytest.raises(InvalidInputError, match="batch_size must be at least 1"):
        batches(samples, torch.tensor([0]), batch_size=0)
