"""How faithful a compressed model is to its original, on held-out batches.

Both models run on the same batches (never used for fitting). The output compared is
the model's first output tensor (a Hugging Face ``ModelOutput``'s first field:
``last_hidden_state`` or ``logits``). For a batch of sequences with an
``attention_mask``, padded positions are left out, as in calibration.

Each sample's output is flattened to one vector (its real positions concatenated for
sequences), and:

- ``relative_error`` = ‖Y_c − Y‖_F / ‖Y‖_F over every sample;
- ``cosine`` = the mean over samples of cos(y_c, y);
- ``top1_agreement`` = the fraction of output rows (one per sample, or one per real
  token for sequence outputs) whose argmax over the last axis is the same;
- ``accuracy`` (with labels, for outputs of shape (N, classes)): top-1 accuracy of
  both models.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from . import batches as batching
from .errors import InvalidInputError
from .evaluate import _eval_mode, model_device

__all__ = ["first_output", "compare"]


def first_output(output) -> torch.Tensor:
    """The first tensor of a model's output (a tensor, tuple/list or ``ModelOutput``)."""
    while not isinstance(output, torch.Tensor):
        if isinstance(output, Mapping):
            output = next(iter(output.values()), None)
        elif isinstance(output, (tuple, list)) and output:
            output = output[0]
        else:
            raise InvalidInputError(f"the model returned a {type(output).__name__}, which holds no tensor to compare")
    return output


def compare(original: nn.Module, compressed: nn.Module, held_out: list, labels: torch.Tensor | None = None) -> dict:
    """Fidelity of ``compressed`` to ``original`` on the batches ``held_out``.

    Args:
        held_out: batches (tensors or keyword mappings) as :func:`netshrink.compress` takes.
        labels: ``(N,)`` int class labels of the held-out samples in order, or None.

    Returns: ``{"samples", "relative_error", "cosine", "top1_agreement"}`` plus
    ``{"accuracy_before", "accuracy_after"}`` when ``labels`` is given.
    """
    total = sum(batching.size(batch) for batch in held_out)
    if total == 0:
        raise InvalidInputError("no held-out samples to compare on; keep some samples out of calibration")
    if labels is not None and len(labels) != total:
        raise InvalidInputError(f"{len(labels)} labels for {total} held-out samples; give one label per sample")
    error_sq = norm_sq = cosine_sum = 0.0
    agree = rows = samples = 0
    correct_before = correct_after = 0
    for batch in held_out:
        y, y_c = _outputs(original, batch), _outputs(compressed, batch)
        mask = batching.row_mask(batch)
        for i in range(y.shape[0]):
            a, b = (y[i], y_c[i]) if mask is None or y.ndim < 3 else (y[i][mask[i]], y_c[i][mask[i]])
            error_sq += float((b - a).square().sum())
            norm_sq += float(a.square().sum())
            cosine_sum += float(torch.nn.functional.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1)))
            top_a, top_b = a.reshape(-1, a.shape[-1]).argmax(-1), b.reshape(-1, b.shape[-1]).argmax(-1)
            agree += int((top_a == top_b).sum())
            rows += top_a.numel()
            if labels is not None:
                if y.ndim != 2:
                    raise InvalidInputError(f"labels were given, but the model's output has shape "
                                            f"{tuple(y.shape)}, not (N, classes): accuracy needs class scores")
                correct_before += int(top_a[0] == labels[samples + i])
                correct_after += int(top_b[0] == labels[samples + i])
        samples += y.shape[0]
    result = {"samples": samples, "relative_error": (error_sq / norm_sq) ** 0.5 if norm_sq else float("nan"),
              "cosine": cosine_sum / samples, "top1_agreement": agree / rows}
    if labels is not None:
        result.update(accuracy_before=correct_before / samples, accuracy_after=correct_after / samples)
    return result


def _outputs(model: nn.Module, batch) -> torch.Tensor:
    with torch.inference_mode(), _eval_mode(model):
        output = batching.call(model, batching.to_device(batch, model_device(model)))
    return first_output(output).detach().to("cpu", torch.float64)
