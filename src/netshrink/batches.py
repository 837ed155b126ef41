"""One calibration batch: what the model is called with, and which rows count.

A batch is a tensor of inputs (``model(x)``) or a mapping of keyword arguments
(``model(**batch)``, e.g. a tokenizer's output). When a mapping holds an
``attention_mask: (B, T)``, only the positions it marks are calibration rows: padding
never enters a statistic (:func:`row_mask`). This module knows nothing of cuts or
statistics.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import nn

from .errors import InvalidInputError

#: The keyword that marks real tokens (1) and padding (0) in a batch of sequences.
MASK_KEY = "attention_mask"


def call(model: nn.Module, batch):
    """``model(batch)`` for a tensor, ``model(**batch)`` for a mapping."""
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(batch)


def size(batch) -> int:
    """The number of samples in ``batch`` (its first dimension)."""
    return int(_first_tensor(batch).shape[0])


def head(batch, count: int):
    """The first ``count`` samples of ``batch`` (tensors sliced along dim 0)."""
    if isinstance(batch, Mapping):
        total = size(batch)
        return {key: value[:count] if _batched(value, total) else value for key, value in batch.items()}
    return batch[:count]


def to_device(batch, device: torch.device):
    """``batch`` with every tensor moved to ``device``."""
    if isinstance(batch, Mapping):
        return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    return batch.to(device)


def split(batch, batch_size: int) -> list:
    """``batch`` cut into batches of at most ``batch_size`` samples along dim 0."""
    total = size(batch)
    if not isinstance(batch, Mapping):
        return list(torch.split(batch, batch_size))
    pieces = []
    for start in range(0, total, batch_size):
        pieces.append({key: value[start:start + batch_size] if _batched(value, total) else value
                       for key, value in batch.items()})
    return pieces


def row_mask(batch) -> torch.Tensor | None:
    """``(B, T)`` bool: the positions of a batch of sequences that are real tokens, or None.

    Statistics of a layer whose input is ``(B, T, d)`` take only the rows this marks.
    """
    if not isinstance(batch, Mapping) or batch.get(MASK_KEY) is None:
        return None
    return batch[MASK_KEY].bool()


def check(batch, index: int) -> None:
    """Raise a specific error for a batch that no model can take (see :func:`check_for`)."""
    if isinstance(batch, Mapping):
        if not batch:
            raise InvalidInputError(f"calibration batch {index} is an empty mapping; give the model's keyword inputs")
        tensors = {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}
        if not tensors:
            raise InvalidInputError(
                f"calibration batch {index} holds no tensor (keys {sorted(batch)}); a keyword batch "
                "maps argument names to tensors, e.g. a tokenizer's output with return_tensors='pt'"
            )
        sizes = {key: value.shape[0] for key, value in tensors.items() if value.ndim > 0}
        if len(set(sizes.values())) > 1:
            raise InvalidInputError(
                f"calibration batch {index} mixes batch sizes {sizes}; every tensor of a keyword batch "
                "needs the same first dimension"
            )
        _check_mask(batch, index)
        tensors = tensors.values()
    elif isinstance(batch, torch.Tensor):
        tensors = [batch]
    else:
        raise InvalidInputError(
            f"calibration batch {index} is a {type(batch).__name__}; expected a tensor, a tuple whose "
            "first element is the input tensor, or a mapping of keyword arguments (model(**batch))"
        )
    for tensor in tensors:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise InvalidInputError(
                f"calibration batch {index} contains {bad} NaN/Inf values; clean or drop those "
                "samples before compressing"
            )


def check_for(model: nn.Module, batch) -> None:
    """Raise when a keyword batch names arguments that ``model.forward`` does not take.

    A forward that takes ``**kwargs`` and no named argument accepts any key; otherwise
    every key must be one of its parameters.
    """
    if not isinstance(batch, Mapping):
        return
    signature = inspect.signature(model.forward)
    named = [name for name, p in signature.parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()) and not named
    unknown = sorted(set(batch) - set(named))
    if unknown and not takes_any:
        raise InvalidInputError(
            f"the calibration batches have key(s) {unknown} that {type(model).__name__}.forward() does not "
            f"take; it takes {named}. Drop or rename those keys (a batch is called as model(**batch))"
        )


def _check_mask(batch: Mapping, index: int) -> None:
    mask = batch.get(MASK_KEY)
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InvalidInputError(
            f"calibration batch {index}: {MASK_KEY} has shape {shape}; it must be (batch, tokens) with 1 "
            "for real tokens and 0 for padding, as a tokenizer returns it"
        )
    tokens = next((batch[key] for key in ("input_ids", "inputs_embeds") if isinstance(batch.get(key), torch.Tensor)),
                  None)
    if tokens is not None and tuple(tokens.shape[:2]) != tuple(mask.shape):
        raise InvalidInputError(
            f"calibration batch {index}: {MASK_KEY} has shape {tuple(mask.shape)} but the tokens have "
            f"shape {tuple(tokens.shape[:2])}; the mask needs one entry per token"
        )
    if mask.dtype is not torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise InvalidInputError(
            f"calibration batch {index}: {MASK_KEY} holds values other than 0 and 1; it marks real "
            "tokens (1) and padding (0)"
        )


def _first_tensor(batch) -> torch.Tensor:
    if isinstance(batch, Mapping):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                return value
        raise InvalidInputError("a keyword batch needs at least one tensor with a batch dimension")
    return batch


def _batched(value, total: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == total


def describe(batch) -> str:
    """A short description of a batch's shapes for error messages."""
    if isinstance(batch, Mapping):
        parts = [f"{key}: {tuple(value.shape)}" if isinstance(value, torch.Tensor) else f"{key}: {value!r}"
                 for key, value in batch.items()]
        return "{" + ", ".join(parts) + "}"
    return f"shape {tuple(batch.shape)}"
