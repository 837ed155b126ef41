"""The model zoo: reference networks, reproducible training and a weight cache.

>>> import netshrink.zoo as zoo
>>> zoo.names()                      # ['alexnet-fmnist', 'lenet300', 'lenet5', 'mlp7', 'vgg-fmnist']
>>> model = zoo.load("mlp7")         # trained, eval mode; trains (~4 min on 2 CPU cores) on first use
>>> zoo.info("mlp7")["test_accuracy"]

All models are trained on Fashion-MNIST (input ``(N, 1, 28, 28)``, 10 logits).
Test accuracy, parameters and training time on 2 shared CPU cores:

==============  =========================================  ==========  ========  ==========
name            architecture                               parameters  accuracy  training
==============  =========================================  ==========  ========  ==========
mlp7            seed 001's 7-layer ReLU MLP, eq. (10)       5,742,602     ~90.0%  4–20 min
lenet300        LeNet-300-100 (Robin Table 1, for MNIST)      266,610     90.1%   1 min
lenet5          Caffe LeNet-5 (Robin Table 1, for MNIST)      431,080     90.1%   7 min
vgg-fmnist      VGG-style CNN with BatchNorm (for AlexNet)    220,170     92.6%   25 min
alexnet-fmnist  AlexNet-style CNN, fc 512-512-10 (seed 002)   675,818     89.2%   20 min
==============  =========================================  ==========  ========  ==========

``lenet300``, ``lenet5`` and ``vgg-fmnist`` stand in for the MNIST/ImageNet networks
of Robin's Table 1, since MNIST and ImageNet are not reachable here; ``alexnet-fmnist``
and ``vgg-fmnist`` stand in for seed 002's AlexNet and VGG-19 on CIFAR-10. The CNNs are
``features`` (an ``nn.Sequential`` of Conv2d/BatchNorm2d/ReLU/MaxPool2d) followed by
``classifier`` (``nn.Flatten`` then Linear/ReLU/Dropout), traceable by ``torch.fx``.

Each entry is a name plus a recipe: a frozen dataclass holding the architecture
and every training choice (see :mod:`netshrink.zoo.architectures` and
:class:`~netshrink.zoo.training.TrainingRecipe`). Adding a model means writing
its ``nn.Module`` and recipe class and calling :func:`register`; the cache key
is derived from the recipe, so editing a recipe retrains rather than loading
stale weights. Weights are cached as safetensors + JSON (:mod:`netshrink.zoo.cache`).
"""

from __future__ import annotations

import difflib
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netshrink.errors import InvalidInputError, UnknownModelError
from netshrink.zoo import cache
from netshrink.zoo.architectures import (
    VGG,
    AlexNet,
    AlexNetRecipe,
    LeNet5,
    LeNet5Recipe,
    LeNet300Recipe,
    MLP7Recipe,
    ReluMLP,
    ReluMLPRecipe,
    VGGRecipe,
)
from netshrink.zoo.cache import CorruptCacheError, cache_dir
from netshrink.zoo.training import TrainingRecipe, default_device, fit

__all__ = [
    "ZooEntry",
    "register",
    "names",
    "entry",
    "recipe",
    "build",
    "load",
    "train",
    "info",
    "paths",
    "cache_dir",
    "CorruptCacheError",
    "TrainingRecipe",
    "ReluMLP",
    "ReluMLPRecipe",
    "MLP7Recipe",
    "LeNet300Recipe",
    "LeNet5",
    "LeNet5Recipe",
    "VGG",
    "VGGRecipe",
    "AlexNet",
    "AlexNetRecipe",
]


@dataclass(frozen=True)
class ZooEntry:
    """A registered model: its name, recipe and a one-line description."""

    name: str
    recipe: TrainingRecipe
    description: str
    dataset: str = "fashion-mnist"


_REGISTRY: dict[str, ZooEntry] = {}


def register(name: str, recipe: TrainingRecipe, description: str, *, replace: bool = False) -> ZooEntry:
    """Add a model to the zoo under ``name`` (lowercase letters, digits, ``-``/``_``)."""
    if not name or not all(c.isalnum() or c in "-_" for c in name) or name != name.lower():
        raise InvalidInputError(f"zoo name {name!r} must be non-empty lowercase letters, digits, '-' or '_'.")
    if not isinstance(recipe, TrainingRecipe):
        raise InvalidInputError(f"recipe for {name!r} must be a TrainingRecipe, got {type(recipe).__name__}.")
    if name in _REGISTRY and not replace:
        raise InvalidInputError(f"zoo name {name!r} is already registered; pass replace=True to redefine it.")
    new = ZooEntry(name, recipe, description)
    _REGISTRY[name] = new
    return new


def names() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def entry(name: str) -> ZooEntry:
    """The registry entry of ``name``; UnknownModelError (listing the names) if there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        pass
    known = names()
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownModelError(f"unknown zoo model {name!r}.{hint} Known models: {', '.join(known)}.")


def recipe(name: str) -> TrainingRecipe:
    """The recipe (architecture + training) of ``name``."""
    return entry(name).recipe


def build(name: str) -> nn.Module:
    """A fresh, untrained ``name``; initial weights drawn under the recipe's seed.

    The global RNG state of the caller is left untouched.
    """
    rec = entry(name).recipe
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rec.seed)
        return rec.build()


def paths(name: str) -> tuple[Path, Path]:
    """(weights, metadata) cache paths of ``name`` (they may not exist yet)."""
    return cache.cache_paths(name, entry(name).recipe)


def _parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _static_info(item: ZooEntry) -> dict[str, Any]:
    with torch.device("meta"):  # shapes only: no memory, no RNG draws
        model = item.recipe.build()
    return {
        "name": item.name,
        "description": item.description,
        "dataset": item.dataset,
        "cache_key": cache.cache_key(item.name, item.recipe),
        "recipe_class": type(item.recipe).__name__,
        "recipe": item.recipe.as_dict(),
        "architecture": item.recipe.architecture(),
        "parameters": _parameter_count(model),
        "epochs": item.recipe.epochs,
        "seed": item.recipe.seed,
    }


def _train_and_store(item: ZooEntry, progress: bool, device: torch.device | str | None) -> nn.Module:
    model = build(item.name)
    device = torch.device(device) if device is not None else default_device()
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(item.recipe.seed)  # for any global-RNG use (e.g. dropout) during training
        history = fit(model, item.recipe, device=device, progress=progress, desc=f"training {item.name}")
    import netshrink

    metadata = {
        **_static_info(item),
        "test_accuracy": history["test_accuracy"],
        "seconds": history["seconds"],
        "history": history["epochs"],
        "device": history["device"],
        "threads": history["threads"],
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "netshrink_version": getattr(netshrink, "__version__", "unknown"),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    cache.write(item.name, item.recipe, model, metadata)
    return model.eval()


def train(
    name: str, *, force: bool = False, progress: bool = True, device: torch.device | str | None = None
) -> nn.Module:
    """Train ``name`` and store it in the cache; return the trained model (eval mode, CPU).

    Without ``force`` an existing cache entry is loaded instead of retraining
    (a corrupt one raises CorruptCacheError); with ``force`` the model is always
    retrained and the entry replaced. ``device`` defaults to CUDA when present.
    A tqdm progress bar is shown when ``progress``.
    """
    item = entry(name)
    with cache.lock(item.name, item.recipe):
        if not force:
            model = build(item.name)
            if cache.read(item.name, item.recipe, model) is not None:
                return model.eval()
        return _train_and_store(item, progress, device)


def load(name: str, *, progress: bool = True) -> nn.Module:
    """The trained ``name`` in eval mode on the CPU, from the cache.

    Trains and caches it on first use (minutes; progress bar when ``progress``).
    Raises UnknownModelError for an unknown name and CorruptCacheError (suggesting
    ``netshrink train NAME --force``) when the cached files are unusable.
    """
    item = entry(name)
    model = build(item.name)
    if cache.read(item.name, item.recipe, model) is not None:
        return model.eval()
    return train(name, progress=progress)


def info(name: str) -> dict[str, Any]:
    """Metadata of ``name``.

    When trained: the cached record (``test_accuracy``, ``epochs``, ``seed``,
    ``seconds``, ``torch_version``, ``architecture`` with the widths, ``recipe``,
    ``parameters``, per-epoch ``history``, ...) with ``"trained": True``. When not
    yet trained: the static part (name, recipe, architecture, parameters,
    cache key) with ``"trained": False``.
    """
    item = entry(name)
    model = build(item.name)
    metadata = cache.read(item.name, item.recipe, model)
    weights, meta_path = cache.cache_paths(item.name, item.recipe)
    if metadata is None:
        return {**_static_info(item), "trained": False, "weights_path": str(weights)}
    return {**metadata, "trained": True, "weights_path": str(weights), "metadata_path": str(meta_path)}


_MLP7 = MLP7Recipe()
register(
    "mlp7",
    _MLP7,
    "Seed 001's model, eq. (10): flatten 28x28, 7 ReLU fully connected layers "
    f"({'-'.join(map(str, _MLP7.widths))}), linear classifier to 10 logits; Fashion-MNIST.",
)

register(
    "lenet300",
    LeNet300Recipe(),
    "LeNet-300-100 (784-300-100-10 ReLU MLP) of Robin's Table 1, on Fashion-MNIST standing in for MNIST.",
)
register(
    "lenet5",
    LeNet5Recipe(),
    "Caffe LeNet-5 (conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10) of Robin's Table 1, "
    "on Fashion-MNIST standing in for MNIST.",
)
register(
    "vgg-fmnist",
    VGGRecipe(),
    "VGG-style CNN (conv 16-M-32-32-M-64-64-M with BatchNorm, fc 256, fc 10) standing in for "
    "AlexNet of Robin's Table 1 (ImageNet is not reachable); Fashion-MNIST.",
)
register(
    "alexnet-fmnist",
    AlexNetRecipe(),
    "AlexNet-style CNN (five ReLU convolutions, three max-pools, fc 512-512-10 with dropout) standing "
    "in for seed 002's AlexNet (CIFAR-10 and ImageNet are not reachable); Fashion-MNIST.",
)
