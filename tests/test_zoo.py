import dataclasses
import json

import pytest
import torch
import torch.fx

from netshrink import zoo
from netshrink.errors import InvalidInputError, UnknownModelError
from netshrink.evaluate import accuracy
from netshrink.zoo import MLP7Recipe, ZooEntry
from netshrink.zoo.cache import CorruptCacheError, cache_dir, cache_key

TINY = MLP7Recipe(widths=(16, 12), epochs=2, batch_size=100, max_train_images=2000, lr=1e-2, seed=5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache and a tiny zoo entry that trains in about a second."""
    monkeypatch.setenv("NETSHRINK_CACHE", str(tmp_path))
    monkeypatch.setitem(zoo._REGISTRY, "tiny", ZooEntry("tiny", TINY, "test model"))
    return tmp_path


def weights_of(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_names_and_recipe():
    assert "mlp7" in zoo.names()
    recipe = zoo.recipe("mlp7")
    assert isinstance(recipe, MLP7Recipe) and len(recipe.widths) == 7
    hash(recipe)  # frozen, hashable
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.epochs = 1


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownModelError) as caught:
        zoo.build("mlp8")
    message = str(caught.value)
    assert "'mlp8'" in message and "Did you mean 'mlp7'?" in message and "Known models: " in message
    assert isinstance(caught.value, KeyError)
    with pytest.raises(UnknownModelError, match="Known models") as caught:
        zoo.load("bert-large")  # close to no zoo name
    assert "Did you mean" not in str(caught.value)


def test_build_shapes_and_forward():
    model = zoo.build("mlp7")
    widths = zoo.recipe("mlp7").widths
    assert [layer.out_features for layer in model.hidden] == list(widths)
    assert model.hidden[0].in_features == 784 and model.classifier.out_features == 10
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)


def test_build_is_deterministic_and_keeps_global_rng():
    state = torch.random.get_rng_state()
    a, b = zoo.build("mlp7"), zoo.build("mlp7")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert same_weights(a.state_dict(), b.state_dict())


def test_fx_traceable():
    model = zoo.build("mlp7").eval()
    traced = torch.fx.symbolic_trace(model)
    linears = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert linears == [f"hidden.{i}" for i in range(7)] + ["classifier"]
    relus = [n for n in traced.graph.nodes if n.op == "call_function" and n.target is torch.relu]
    assert len(relus) == 7
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(traced(x), model(x))


def test_recipe_change_changes_key():
    base = MLP7Recipe()
    assert cache_key("mlp7", base) == cache_key("mlp7", MLP7Recipe())
    variants = [
        dataclasses.replace(base, epochs=base.epochs + 1),
        dataclasses.replace(base, weight_decay=0.123),
        dataclasses.replace(base, widths=(8,) * 7),
        dataclasses.replace(base, revision=base.revision + 1),
    ]
    keys = {cache_key("mlp7", r) for r in variants} | {cache_key("mlp7", base), cache_key("other", base)}
    assert len(keys) == len(variants) + 2
    assert all(len(k) == 12 for k in keys)


def test_invalid_recipe():
    with pytest.raises(InvalidInputError, match="optimizer"):
        MLP7Recipe(optimizer="lbfgs")
    with pytest.raises(InvalidInputError, match="epochs"):
        MLP7Recipe(epochs=0)


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("NETSHRINK_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "netshrink"
    monkeypatch.setenv("NETSHRINK_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_cache_round_trip(cache, fmnist_test):
    assert zoo.info("tiny")["trained"] is False
    trained = zoo.train("tiny", progress=False)
    assert not trained.training
    files = sorted(p.name for p in (cache / "zoo").iterdir())
    key = cache_key("tiny", TINY)
    assert files == [f"tiny-{key}.json", f"tiny-{key}.lock", f"tiny-{key}.safetensors"]
    # no pickle anywhere: safetensors starts with a little-endian header length, JSON is text
    for path in (p for p in cache.rglob("*") if p.is_file()):
        assert path.suffix in {".json", ".safetensors", ".lock"}
        assert not path.read_bytes().startswith(b"\x80")
    state = torch.random.get_rng_state()
    loaded = zoo.load("tiny", progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert not loaded.training
    assert same_weights(weights_of(trained), weights_of(loaded))

    info = zoo.info("tiny")
    assert info["trained"] is True
    assert info["architecture"]["widths"] == [16, 12]
    assert info["recipe"]["epochs"] == 2 and info["epochs"] == 2 and info["seed"] == 5
    assert info["torch_version"] == torch.__version__
    assert info["seconds"] > 0 and len(info["history"]) == 2
    assert info["parameters"] == sum(p.numel() for p in loaded.parameters())
    images, labels = fmnist_test
    assert info["test_accuracy"] == accuracy(loaded, images, labels)
    assert info["test_accuracy"] > 0.5  # learned something from 2000 images
    json.loads((cache / "zoo" / f"tiny-{key}.json").read_text())


def test_train_reuses_cache_and_force_reproduces(cache):
    first = weights_of(zoo.train("tiny", progress=False))
    meta = cache / "zoo" / f"tiny-{cache_key('tiny', TINY)}.json"
    stamp = meta.stat().st_mtime_ns
    zoo.train("tiny", progress=False)  # cached: no retraining
    assert meta.stat().st_mtime_ns == stamp
    again = weights_of(zoo.train("tiny", force=True, progress=False))
    assert same_weights(first, again)  # training is deterministic


def test_recipe_change_retrains(cache, monkeypatch):
    zoo.train("tiny", progress=False)
    changed = dataclasses.replace(TINY, epochs=1)
    monkeypatch.setitem(zoo._REGISTRY, "tiny", ZooEntry("tiny", changed, "test model"))
    assert zoo.info("tiny")["trained"] is False  # the old weights are not reused
    zoo.load("tiny", progress=False)
    assert len(list((cache / "zoo").glob("tiny-*.safetensors"))) == 2


def test_corrupt_cache_is_reported(cache):
    zoo.train("tiny", progress=False)
    weights, meta = zoo.paths("tiny")
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptCacheError, match="netshrink train tiny --force") as caught:
        zoo.load("tiny", progress=False)
    assert str(weights) in str(caught.value)
    zoo.train("tiny", force=True, progress=False)
    zoo.load("tiny", progress=False)
    meta.write_text("{broken")
    with pytest.raises(CorruptCacheError, match="not valid JSON"):
        zoo.info("tiny")


def test_weights_of_another_architecture_are_rejected(cache, monkeypatch):
    zoo.train("tiny", progress=False)
    weights, _ = zoo.paths("tiny")
    from safetensors.torch import save_file

    save_file({"hidden.0.weight": torch.zeros(2, 2)}, str(weights))
    with pytest.raises(CorruptCacheError, match="do not fit"):
        zoo.load("tiny", progress=False)


def test_register_validates():
    with pytest.raises(InvalidInputError, match="already registered"):
        zoo.register("mlp7", MLP7Recipe(), "again")
    with pytest.raises(InvalidInputError, match="lowercase"):
        zoo.register("My Model", MLP7Recipe(), "x")


def test_trained_mlp7_meets_accuracy(trained_mlp7, fmnist_test):
    images, labels = fmnist_test
    acc = accuracy(trained_mlp7, images, labels)
    assert acc >= 0.89
    info = zoo.info("mlp7")
    assert info["trained"] and info["test_accuracy"] == pytest.approx(acc)
    assert info["architecture"]["widths"] == list(zoo.recipe("mlp7").widths)


def test_augmentation_mirrors_and_translates():
    from netshrink.zoo.training import _augment

    images = torch.rand(64, 1, 28, 28)
    plain = MLP7Recipe()
    assert torch.equal(_augment(images, plain, torch.Generator().manual_seed(0)), images)
    flipped = _augment(images, dataclasses.replace(plain, hflip=True), torch.Generator().manual_seed(0))
    is_flip = [torch.equal(f, x.flip(-1)) for f, x in zip(flipped, images)]
    assert all(torch.equal(f, x) or flip for f, x, flip in zip(flipped, images, is_flip))
    assert 0 < sum(is_flip) < 64
    shifted = _augment(images, dataclasses.replace(plain, shift=2), torch.Generator().manual_seed(0))
    for s, x in zip(shifted, images):  # every output is the input moved by at most 2 pixels
        padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
        assert any(torch.equal(s, padded[:, i : i + 28, j : j + 28]) for i in range(5) for j in range(5))
    again = _augment(images, dataclasses.replace(plain, shift=2), torch.Generator().manual_seed(0))
    assert torch.equal(shifted, again)


# Parameter counts written out by hand from the architectures.
_COUNTS = {
    "lenet300": 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,
    "lenet5": 20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 500 * 10 + 10,
    # conv 16-M-32-32-M-64-64-M (3×3, bias) + BatchNorm (2 per channel), fc 576→256→10
    "vgg-fmnist": (1 * 16 * 9 + 16 + 32) + (16 * 32 * 9 + 32 + 64) + (32 * 32 * 9 + 32 + 64)
    + (32 * 64 * 9 + 64 + 128) + (64 * 64 * 9 + 64 + 128) + (576 * 256 + 256) + (256 * 10 + 10),
    # conv 24@5×5-M-48-M-64-64-64-M (3×3, bias, no BatchNorm), fc 576→512→512→10
    "alexnet-fmnist": (1 * 24 * 25 + 24) + (24 * 48 * 9 + 48) + (48 * 64 * 9 + 64) + 2 * (64 * 64 * 9 + 64)
    + (576 * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10),
}


@pytest.mark.parametrize("name", sorted(_COUNTS))
def test_robin_models_shapes_counts_and_tracing(name):
    model = zoo.build(name).eval()
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == _COUNTS[name]
    torch.fx.symbolic_trace(model)
    assert same_weights(model.state_dict(), zoo.build(name).state_dict())
    assert "Fashion-MNIST" in zoo.entry(name).description


def test_robin_models_have_distinct_recipes():
    keys = {zoo.paths(name)[0].name for name in zoo.names()}
    assert len(keys) == len(zoo.names())
    # the recipes themselves differ, not only the names the keys include
    same_name = {cache_key("x", zoo.recipe(name)) for name in zoo.names()}
    assert len(same_name) == len(zoo.names())


def test_mlp7_cache_key_is_unchanged():
    # Weights already trained into users' caches are found under this key; changing
    # MLP7Recipe, its architecture() or the shared TrainingRecipe fields retrains mlp7.
    assert cache_key("mlp7", zoo.recipe("mlp7")) == "f8e543734df5"


def test_names_are_sorted_and_include_the_robin_models():
    assert zoo.names() == sorted(zoo.names())
    assert {"alexnet-fmnist", "lenet300", "lenet5", "mlp7", "vgg-fmnist"} <= set(zoo.names())


@pytest.mark.parametrize("name", sorted(_COUNTS))
def test_robin_models_build_under_the_recipe_seed(name):
    state = torch.random.get_rng_state()
    built = zoo.build(name).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    recipe = zoo.recipe(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        assert same_weights(built, recipe.build().state_dict())
        torch.manual_seed(recipe.seed + 1)
        assert not same_weights(built, recipe.build().state_dict())


@pytest.mark.parametrize("name", sorted(_COUNTS))
def test_robin_models_use_every_standard_module_once(name):
    model = zoo.build(name).eval()
    traced = torch.fx.symbolic_trace(model)
    called = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    leaves = [path for path, m in model.named_modules() if not list(m.children())]
    assert sorted(called) == sorted(leaves) and len(set(called)) == len(called)
    assert all(type(m).__module__.startswith("torch.nn.modules") for _, m in model.named_modules()
               if m is not model and not isinstance(m, (torch.nn.Sequential, torch.nn.ModuleList)))
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(traced(x), model(x))
    assert zoo.info(name)["parameters"] == _COUNTS[name]


def test_lenet300_reuses_relu_mlp():
    model = zoo.build("lenet300")
    assert isinstance(model, zoo.ReluMLP)
    layers = {path: (m.in_features, m.out_features) for path, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)}
    assert layers == {"hidden.0": (784, 300), "hidden.1": (300, 100), "classifier": (100, 10)}


@pytest.mark.parametrize("name", ["lenet5", "vgg-fmnist", "alexnet-fmnist"])
def test_cnns_are_features_then_classifier(name):
    nn = torch.nn
    model = zoo.build(name).eval()
    assert [n for n, _ in model.named_children()] == ["features", "classifier"]
    assert isinstance(model.features, nn.Sequential) and isinstance(model.classifier, nn.Sequential)
    assert all(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d)) for m in model.features)
    head = list(model.classifier)
    assert isinstance(head[0], nn.Flatten) and isinstance(head[-1], nn.Linear)
    assert all(isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout)) for m in head[1:])
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), model.classifier(model.features(x)))
    assert head[1].in_features == model.features(x).flatten(1).shape[1]


def test_vgg_blocks_are_conv_batchnorm_relu():
    features = list(zoo.build("vgg-fmnist").features)
    convs = [i for i, m in enumerate(features) if isinstance(m, torch.nn.Conv2d)]
    for i in convs:
        conv, bn, relu = features[i : i + 3]
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
        assert isinstance(bn, torch.nn.BatchNorm2d) and bn.num_features == conv.out_channels
        assert isinstance(relu, torch.nn.ReLU)
    pools = [m for m in features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3 and len(convs) + len(pools) == len(zoo.recipe("vgg-fmnist").channels)


def test_lenet5_is_the_caffe_variant_without_conv_activations():
    features = zoo.build("lenet5").features
    assert [type(m).__name__ for m in features] == ["Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d"]


@pytest.mark.slow
@pytest.mark.parametrize("name,floor", [("lenet300", 0.88), ("lenet5", 0.89), ("vgg-fmnist", 0.92)])
def test_trained_robin_models_meet_accuracy(name, floor, fmnist_test):
    images, labels = fmnist_test
    acc = accuracy(zoo.load(name, progress=False), images, labels)
    assert acc >= floor
    info = zoo.info(name)
    assert info["trained"] and info["test_accuracy"] == pytest.approx(acc)
    assert info["parameters"] == _COUNTS[name]


def test_alexnet_has_three_fully_connected_layers_with_dropout():
    model = zoo.build("alexnet-fmnist")
    head = [type(m).__name__ for m in model.classifier]
    assert head == ["Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [m.p for m in model.classifier if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.padding[0]) for c in convs] == [
        (24, 5, 2), (48, 3, 1), (64, 3, 1), (64, 3, 1), (64, 3, 1)]
