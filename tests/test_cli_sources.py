"""End to end from the command line, on files each test writes itself: a user model given as
module:factory with safetensors and .npy calibration, an image-folder classifier with labels
from subfolders, and a saved tiny Hugging Face BERT with a text file. Each writes --out,
--onnx and --json; the outputs reload and agree with the in-memory compressed model."""

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import netshrink
from netshrink.cli import _parser, main

pytest.importorskip("onnxruntime")

USERNET = """
import torch
from torch import nn

def mlp():
    return nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 5))

def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(96, 3))
"""


@pytest.fixture
def usernet(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(textwrap.dedent(USERNET))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import usernet

    return usernet


def _job(argv):
    """The job of ``argv`` without its outputs, run in process: its record and the in-memory compression."""
    from netshrink.job import run

    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in ("--out", "--onnx", "--report"):
            skip = True
        else:
            kept.append(token)
    return run(_parser().parse_args(kept), progress=False)


def _onnx_outputs(path, batch):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: (batch[i.name] if isinstance(batch, dict) else batch).numpy() for i in session.get_inputs()}
    return torch.from_numpy(session.run(None, feeds)[0])


def test_factory_with_safetensors_and_npy(usernet, tmp_path, capsys):
    torch.manual_seed(0)
    model = usernet.mlp().eval()
    save_file(model.state_dict(), tmp_path / "mlp.safetensors")
    inputs = np.random.default_rng(0).standard_normal((600, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", inputs)
    before = {p.name: p.read_bytes() for p in (tmp_path / "mlp.safetensors", tmp_path / "x.npy")}
    argv = ["compress", "usernet:mlp", "--weights", "mlp.safetensors", "--calibration", "x.npy",
            "--method", "group_lasso", "--keep", "0.5", "--held-out", "100", "--out", "small",
            "--onnx", "small.onnx", "--report", "report", "--json"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["source_kind"] == "factory" and record["calibration_size"] == 500
    assert record["fidelity"]["samples"] == 100 and 0 < record["fidelity"]["relative_error"] < 1
    assert record["params_after"] < record["params_before"]
    assert record["onnx"]["max_relative_difference"] < 1e-4
    assert record["onnx"]["onnx_bytes_after"] < record["onnx"]["onnx_bytes_before"]
    assert record["onnx"]["safetensors_bytes_after"] < record["onnx"]["safetensors_bytes_before"]
    assert (tmp_path / "report" / "index.html").is_file()
    assert {p.name: p.read_bytes() for p in (tmp_path / "mlp.safetensors", tmp_path / "x.npy")} == before

    _, result = _job(argv)  # the same job again, in memory
    reloaded = netshrink.load(tmp_path / "small")  # no original passed: the manifest names the factory
    x = torch.from_numpy(inputs[:37])
    with torch.no_grad():
        expected = result.model(x)
        torch.testing.assert_close(reloaded(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_onnx_outputs(tmp_path / "small.onnx", x), expected, rtol=1e-4, atol=1e-5)


def _image_folder(root, per_class=40, seed=0):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("cat", "dog", "fish")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)
            pixels[..., c] = np.clip(pixels[..., c].astype(int) + 80, 0, 255)  # a class-dependent colour cast
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder_classifier_with_labels(usernet, tmp_path, capsys):
    torch.manual_seed(1)
    model = usernet.cnn().eval()
    torch.save(model.state_dict(), tmp_path / "cnn.pt")
    _image_folder(tmp_path / "images")
    argv = ["compress", "usernet:cnn", "--weights", "cnn.pt", "--calibration", "images", "--image-size", "16",
            "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--method", "interpolative", "--keep", "0.5",
            "--held-out", "30", "--out", "small", "--onnx", "small.onnx", "--json"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["fidelity"]["samples"] == 30 and record["calibration_size"] == 90
    assert 0 <= record["accuracy_before"] <= 1 and 0 <= record["accuracy_after"] <= 1
    assert {layer["kind"] for layer in record["layers"]} == {"channels"}
    assert record["onnx"]["max_relative_difference"] < 1e-4

    _, result = _job(argv)
    reloaded = netshrink.load(tmp_path / "small")
    images = torch.rand(7, 3, 16, 16)
    with torch.no_grad():
        expected = result.model.eval()(images)
        torch.testing.assert_close(reloaded.eval()(images), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_onnx_outputs(tmp_path / "small.onnx", images), expected, rtol=1e-4, atol=1e-5)


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"the a cat dog sat on mat ran far and of to is it was".split()]


def _bert_directory(folder):
    transformers = pytest.importorskip("transformers")
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=64)
    torch.manual_seed(2)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


def test_huggingface_directory_with_a_text_file(tmp_path, capsys, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    tokenizer = _bert_directory(tmp_path / "bert")
    rng = np.random.default_rng(3)
    lines = [" ".join(rng.choice(WORDS[5:], rng.integers(3, 14))) for _ in range(160)]
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n")
    argv = ["compress", "bert", "--calibration", "texts.txt", "--method", "group_lasso", "--keep", "0.5",
            "--only", "neurons", "--held-out", "40", "--out", "small", "--onnx", "small.onnx", "--json"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["source_kind"] == "huggingface" and record["config"] == {"intermediate_size": 24}
    assert {layer["kind"] for layer in record["layers"]} == {"neurons"}
    assert record["fidelity"]["cosine"] > 0.5 and record["onnx"]["max_relative_difference"] < 1e-4
    assert (tmp_path / "small" / "vocab.txt").is_file() and (tmp_path / "small" / "config.json").is_file()

    _, result = _job(argv)
    batch = dict(tokenizer(lines[:5], padding=True, return_tensors="pt"))
    with torch.no_grad():
        expected = result.model(**batch).last_hidden_state
        loaded = transformers.AutoModel.from_pretrained(tmp_path / "small")
        torch.testing.assert_close(loaded(**batch).last_hidden_state, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(netshrink.load(tmp_path / "small")(**batch).last_hidden_state, expected,
                                   rtol=1e-5, atol=1e-5)
    onnx_batch = {k: v for k, v in batch.items()}
    torch.testing.assert_close(_onnx_outputs(tmp_path / "small.onnx", onnx_batch), expected, rtol=1e-4, atol=1e-4)

    heads = ["compress", "bert", "--calibration", "texts.txt", "--method", "group_lasso", "--keep", "0.5",
             "--held-out", "40", "--out", "heads", "--json"]
    assert main(heads) == 0
    record = json.loads(capsys.readouterr().out)
    assert {layer["kind"] for layer in record["layers"]} == {"neurons", "heads"}
    assert not (tmp_path / "heads" / "config.json").exists()  # BERT's config cannot state fewer heads
    rebuilt = netshrink.load(tmp_path / "heads")
    assert rebuilt.encoder.layer[0].attention.self.num_attention_heads == 2


def test_bench_of_an_original_and_its_compression(usernet, tmp_path, capsys):
    torch.manual_seed(0)
    save_file(usernet.mlp().state_dict(), tmp_path / "mlp.safetensors")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((200, 12)).astype(np.float32))
    assert main(["compress", "usernet:mlp", "--weights", "mlp.safetensors", "--calibration", "x.npy",
                 "--keep", "0.25", "--out", "small", "--quiet", "--json"]) == 0
    compressed = json.loads(capsys.readouterr().out)
    assert main(["bench", "usernet:mlp", "small", "--weights", "mlp.safetensors", "--calibration", "x.npy",
                 "--repeats", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["param_ratio"] == pytest.approx(compressed["ratio"])
    rows = {(row["runtime"], row["batch"]) for row in result["rows"]}
    assert rows == {("pytorch", 1), ("pytorch", 64), ("onnxruntime", 1), ("onnxruntime", 64)}
    assert all(row["original_ms"] > 0 and row["compressed_ms"] > 0 for row in result["rows"])
    np.save(tmp_path / "few.npy", np.zeros((10, 12), np.float32))
    assert main(["bench", "usernet:mlp", "small", "--weights", "mlp.safetensors", "--calibration", "few.npy"]) == 2
    assert "needs 64" in capsys.readouterr().err
