"""Where a model comes from: a zoo name, a Hugging Face directory, or ``module:factory``.

``netshrink compress SOURCE`` accepts three kinds of SOURCE::

    mlp7                          a zoo name (trained on first use, cached)
    path/to/hf-model/             config.json + *.safetensors (+ tokenizer files), loaded offline
    mypackage.models:build_net    a callable returning the architecture, with --weights FILE

No pickle of a whole model is ever loaded: weights come from ``.safetensors`` files, or
from a ``.pt``/``.pth`` state dict through ``torch.load(weights_only=True)``.

Every loaded model carries a *recipe* (:attr:`Source.recipe`, a JSON-able dict) that
rebuilds its architecture without the original at hand (:func:`build_architecture`);
:meth:`netshrink.Compression.save` stores it in the manifest so that
``netshrink.load(DIR)`` needs nothing else.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import InvalidInputError, NetshrinkError, UnknownModelError

__all__ = ["Source", "load_source", "build_architecture", "load_weights", "TOKENIZER_FILES"]

#: Files of a Hugging Face directory that belong to its tokenizer (copied along with a compression).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "spiece.model",
                   "sentencepiece.bpe.model")


@dataclass
class Source:
    """A loaded model and how to rebuild it.

    Attributes:
        kind: ``"zoo"``, ``"huggingface"`` or ``"factory"``.
        name: SOURCE as given.
        model: the loaded model, in eval mode.
        recipe: JSON-able description that :func:`build_architecture` rebuilds the
            (untrained) architecture from.
        tokenizer: the directory's tokenizer for a Hugging Face text model, else None.
        directory: the Hugging Face directory, else None.
    """

    kind: str
    name: str
    model: nn.Module
    recipe: dict
    tokenizer: object | None = None
    directory: Path | None = None
    notes: list[str] = field(default_factory=list)


def load_source(source: str, weights: str | os.PathLike | None = None, *, progress: bool = False) -> Source:
    """Load SOURCE (see the module docstring); ``weights`` only with ``module:factory``."""
    path = Path(source)
    if path.is_dir():
        _no_weights(source, weights, "a Hugging Face directory holds its own weights")
        return _huggingface(path)
    if ":" in source and not path.exists():
        return _factory(source, weights)
    from . import zoo

    if source not in zoo.names():
        raise UnknownModelError(
            f"{source!r} is neither a zoo name ({', '.join(zoo.names())}), nor a Hugging Face model "
            "directory (a folder with config.json), nor module:factory (a Python callable that returns "
            "the architecture, e.g. mypackage.models:build, with --weights FILE)"
        )
    _no_weights(source, weights, "zoo models come with their own trained weights")
    return Source("zoo", source, zoo.load(source, progress=progress), {"kind": "zoo", "name": source})


def build_architecture(recipe: dict) -> nn.Module:
    """A fresh (untrained) instance of the architecture ``recipe`` describes."""
    kind = recipe.get("kind")
    if kind == "zoo":
        from . import zoo

        return zoo.build(recipe["name"])
    if kind == "factory":
        return _call_factory(recipe["factory"])
    if kind == "huggingface":
        transformers = _transformers()
        config = transformers.AutoConfig.for_model(**recipe["config"])
        return getattr(transformers, recipe["class"])(config).eval()
    raise NetshrinkError(f"unknown source kind {kind!r} in the manifest; it was written by a newer netshrink?")


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a ``.pt``/``.pth`` state dict without pickle."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"weights file {path} does not exist; pass the path of a .safetensors "
                                "or .pt/.pth state dict with --weights")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InvalidInputError(f"{path} is not a readable safetensors file ({exc}); it is corrupt or "
                                    "truncated: write it again with safetensors.torch.save_file") from None
    if path.suffix not in (".pt", ".pth"):
        raise InvalidInputError(f"weights file {path} has suffix {path.suffix!r}; netshrink reads .safetensors "
                                "and .pt/.pth state dicts")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InvalidInputError(
            f"{path} needs pickle to load (it holds Python objects, e.g. a whole model, not only tensors), "
            "and netshrink never unpickles: save a state dict instead, "
            "torch.save(model.state_dict(), path), or safetensors.torch.save_file(model.state_dict(), path)"
            f" [{str(exc).splitlines()[0]}]"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise InvalidInputError(f"{path} is not a readable PyTorch file ({exc}); it is corrupt or truncated")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInputError(f"{path} holds a {type(state).__name__}, not a state dict of tensors; save "
                                "model.state_dict()")
    return state


# --------------------------------------------------------------------------------------


def _no_weights(source: str, weights, why: str) -> None:
    if weights is not None:
        raise InvalidInputError(f"--weights is only for module:factory sources; {source!r}: {why}")


def _factory(source: str, weights) -> Source:
    model = _call_factory(source)
    notes = []
    if weights is not None:
        state = load_weights(weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InvalidInputError(
                f"the weights in {weights} do not fit the architecture {source} returns: "
                f"{' '.join(str(exc).split())}. Pass the factory that built the trained model (with the "
                "same arguments), or the weights saved from it"
            ) from None
    else:
        notes.append(f"no --weights: {source} is used with the weights it was built with")
    return Source("factory", source, model.eval(), {"kind": "factory", "factory": source}, notes=notes)


def _call_factory(source: str) -> nn.Module:
    module_name, _, attribute = source.partition(":")
    if not module_name or not attribute:
        raise InvalidInputError(f"{source!r} is not module:factory; write it as package.module:function")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does, so a project's own modules import
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(f"cannot import {module_name!r} for {source!r}: {exc}. Run from the folder "
                                "that holds it, or install its package") from None
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise InvalidInputError(f"module {module_name!r} has no attribute {part!r} (from {source!r})")
        factory = getattr(factory, part)
    if isinstance(factory, nn.Module) or not callable(factory):
        raise InvalidInputError(
            f"{source} is a {type(factory).__name__}, not a callable: point at a function or class that "
            "returns the architecture (module:factory), e.g. def build(): return MyNet()"
        )
    model = factory()
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"{source}() returned a {type(model).__name__}, not a torch.nn.Module; the "
                                "factory must return the model")
    return model


def _transformers():
    try:
        import transformers
    except ImportError:
        raise NetshrinkError("Hugging Face models need transformers: pip install 'netshrink[hf]'") from None
    return transformers


def _huggingface(folder: Path) -> Source:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InvalidInputError(
            f"{folder} is a folder without config.json, so it is not a Hugging Face model directory; point "
            "at the folder that save_pretrained() wrote (config.json + *.safetensors)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = _transformers()
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"{config_path} cannot be loaded by transformers {transformers.__version__} "
            f"(model_type {raw.get('model_type') if isinstance(raw, dict) else None!r}): "
            f"{str(exc).splitlines()[0]}. Check its model_type, or upgrade transformers"
        ) from None
    names = [name for name in (config.architectures or []) if hasattr(transformers, name)]
    model_class = getattr(transformers, names[0]) if names else transformers.AutoModel
    if not any(folder.glob("*.safetensors")):
        raise InvalidInputError(f"{folder} has no *.safetensors weights (netshrink never unpickles "
                                "pytorch_model.bin); save it with save_pretrained(safe_serialization=True)")
    try:
        model = model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except (ValueError, OSError, RuntimeError) as exc:
        raise InvalidInputError(f"transformers could not load {folder} as {model_class.__name__}: "
                                f"{str(exc).splitlines()[0]}") from None
    if model_class is transformers.AutoModel:
        model_class = type(model)
    tokenizer = None
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    recipe = {"kind": "huggingface", "class": model_class.__name__, "config": model.config.to_dict()}
    return Source("huggingface", str(folder), model.eval(), recipe, tokenizer=tokenizer, directory=folder)
