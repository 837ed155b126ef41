"""netshrink reproduce shenouda: the compression report (issue 4, item 3) and the whole run."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from netshrink import zoo
from netshrink.errors import OutputExistsError
from netshrink.experiments import shenouda, shenouda_compress
from netshrink.experiments.runtime import Log

TINY = dataclasses.replace(
    shenouda_compress.QUICK, networks=("vgg-fmnist",), roles=("last", "pen", "first"), calibration_size=300,
    validation_size=200, test_size=300, lam_grid=(1e-4, 0.3), prox_adam_seconds=0.3, train_missing=False,
)


@pytest.fixture(scope="module")
def tiny_study():
    return shenouda_compress.study(TINY, Log("test", False))


def test_published_settings_are_the_originals():
    assert shenouda_compress.published_settings("vgg-fmnist", "last") == (0.03, 0.01)  # VGG-19
    assert shenouda_compress.published_settings("alexnet-fmnist", "last") == (0.07, 0.05)  # AlexNet
    for role in ("pen", "first"):
        assert shenouda_compress.published_settings("alexnet-fmnist", role) == (0.07, 0.5)


def test_every_layer_reports_scores_kept_inputs_and_honest_parameters(tiny_study):
    (net,) = tiny_study["networks"]
    model = zoo.build("vgg-fmnist") if not net["trained"] else zoo.load("vgg-fmnist", progress=False)
    assert net["parameters"] == sum(p.numel() for p in model.parameters())
    # vgg-fmnist has two Linear layers: "pen" and "first" are the same layer, reported once
    assert [layer["roles"] for layer in net["layers"]] == [["last"], ["pen", "first"]]
    last, first = net["layers"]
    assert (last["layer"], last["inputs"], last["sampled"]) == ("classifier.4", 256, False)
    assert (first["layer"], first["inputs"], first["sampled"]) == ("classifier.1", 576, True)
    for layer in net["layers"]:
        runs = [*layer["runs"].values(), *layer["sweep"]]
        assert layer["runs"]["published_prox_adam"]["solver_details"]["solver"] == "prox_adam"
        assert layer["runs"]["published_fista"]["lam"] == layer["published"]["lam"]
        for run in runs:
            assert 1 <= run["kept"] <= run["total"] == layer["inputs"]
            removed = run["total"] - run["kept"]
            if layer["sampled"]:  # only the layer's own columns go
                assert net["parameters"] - run["params_after"] == removed * layer["outputs"]
            else:  # the producer's rows (weights + bias) and the consumer's columns
                assert net["parameters"] - run["params_after"] == removed * (576 + 1 + layer["outputs"])
            assert {"validation", "test"} <= set(run["scores"])
            for split, score in run["scores"].items():
                assert 0 <= score["accuracy"] <= 1 and score["loss"] > 0, split
        for run in layer["runs"].values():  # the reported runs are scored on the training images too
            assert set(run["scores"]) == {"train", "validation", "test"}
        if layer["chosen_lam"] is not None:
            chosen = next(r for r in layer["sweep"] if r["lam"] == layer["chosen_lam"])
            assert "train" in chosen["scores"]
        # a larger lam never keeps more inputs on this two-point grid
        assert layer["sweep"][0]["kept"] >= layer["sweep"][1]["kept"]


def test_scores_are_cross_entropy_and_accuracy():
    generator = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    images, labels = torch.randn(50, 1, 2, 2, generator=generator), torch.randint(0, 3, (50,), generator=generator)
    scores = shenouda_compress._scores(model, images, labels)
    with torch.no_grad():
        logits = model(images)
    assert scores["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)
    assert scores["accuracy"] == pytest.approx(sum(int(a == b) for a, b in zip(logits.argmax(1), labels)) / 50)


def test_the_chosen_lam_keeps_the_fewest_inputs_within_the_drop():
    def point(lam, kept, accuracy):
        return {"lam": lam, "kept": kept, "scores": {"validation": {"accuracy": accuracy}}}

    sweep = [point(1e-3, 90, 0.900), point(1e-2, 60, 0.897), point(0.03, 60, 0.8951), point(0.1, 20, 0.80)]
    assert shenouda_compress._chosen(sweep, 0.90, 0.5)["lam"] == 0.03  # ties on kept: the larger lam
    assert shenouda_compress._chosen(sweep, 0.90, 0.4)["lam"] == 1e-2
    assert shenouda_compress._chosen(sweep, 0.90, 0.2)["lam"] == 1e-3
    assert shenouda_compress._chosen(sweep, 0.95, 0.5) is None


def test_run_writes_the_report_atomically_and_refuses_an_existing_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(shenouda_compress, "QUICK", dataclasses.replace(TINY, roles=("last",), lam_grid=(0.01,)))
    out = tmp_path / "compression"
    text = shenouda_compress.run(out, quick=True)
    assert sorted(p.name for p in out.iterdir()) == ["compression.json", "compression.png", "summary.md"]
    data = json.loads((out / "compression.json").read_text())
    assert data["mode"] == "quick" and data["networks"][0]["layers"][0]["layer"] == "classifier.4"
    assert "Fashion-MNIST stands in for CIFAR-10" in text and "train loss" in text
    if not data["networks"][0]["trained"]:
        assert "UNTRAINED" in text
    import matplotlib.image

    assert matplotlib.image.imread(out / "compression.png").shape[2] in (3, 4)
    with pytest.raises(OutputExistsError):
        shenouda_compress.run(out, quick=True)
    assert (out / "summary.md").read_text() == text


@pytest.mark.slow
def test_reproduce_shenouda_quick_writes_every_part(tmp_path):
    out = tmp_path / "shenouda"
    text = shenouda.run(out, quick=True)
    for part in shenouda.PARTS:
        assert (out / part / "summary.md").is_file()
        assert any(p.suffix == ".png" for p in (out / part).iterdir())
        assert any(p.suffix == ".json" for p in (out / part).iterdir())
    assert (out / "summary.md").read_text() == text
    assert "](compression/compression.png)" in text
