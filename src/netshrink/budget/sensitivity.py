"""How much the model's output cares about each consumer output: a Fisher / Gauss–Newton estimate.

A cut's decision perturbs its consumers' outputs ``y`` (pre-activations) by a residual
``r = ŷ − y``. To second order, the increase of the output loss is ``½ rᵀ H r`` with
``H`` the Gauss–Newton Hessian of the loss at the original output (Kwon et al. 2022 use
the same Fisher information of the output distribution to price masks). Treating the
rows (samples, tokens, positions) as independent of the residual they carry,

    ΔL ≈ ½ tr(G · E_rows[r rᵀ]),     G = (1/N) Σ_{rows} g gᵀ   (out × out),

where ``g = ∂ℓ/∂y`` is the gradient of a loss sampled so that ``E[g gᵀ] = H``, summed over
the rows of the ``N`` calibration samples seen. ``E_rows[r rᵀ]`` is exactly what the Gram
statistics give for any candidate decision (:mod:`netshrink.budget.curves`), so the
estimate is the expected increase of the loss per sample.

``G`` is kept whole: a residual is correlated across channels, and the network mixes
them, so its diagonal alone underestimates the loss of early layers many times over
(on mlp7, 10–40× for the first four cuts against the measured KL; the whole matrix is
within 1.3×, 2.3× for the first). Past :data:`FULL_LIMIT` outputs only the diagonal
``(out,)`` is kept (the memory of ``out²`` floats per layer).

Two output losses (``output_loss``):

- ``"kl"``: the KL divergence of the output distribution ``softmax(logits)`` from the
  original's. Its Hessian at the original is the Fisher information; ``g`` is the
  gradient of ``−log softmax(logits)[ŷ]`` with ``ŷ`` drawn from the model's own
  distribution (no labels needed).
- ``"mse"``: ``½‖out − out₀‖²`` for outputs that are features (hidden states, embeddings);
  ``H = JᵀJ`` and ``g = Jᵀε`` with ``ε ~ N(0, I)``.

``"auto"`` takes ``"kl"`` for an output with ``logits`` and for a plain ``(N, classes)``
tensor, ``"mse"`` otherwise. Padding positions of keyword batches count in neither the
loss nor the rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import batches, distributed
from ..errors import InvalidInputError
from ..evaluate import model_device

OUTPUT_LOSSES = ("auto", "kl", "mse")
#: Layers with more outputs keep only the diagonal of their ``G``.
FULL_LIMIT = 4096


def output_sensitivities(model: nn.Module, paths: Sequence[str], calibration, *, output_loss: str = "auto",
                         samples: int = 1024, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{path: G}``, ``G: (out, out)`` float64 (``(out,)``, its diagonal, past
    :data:`FULL_LIMIT` outputs) for the layer at each of ``paths`` (module doc).

    Args:
        model: the original model (not modified; its flags and ``requires_grad`` are
            restored).
        paths: the layers whose outputs are weighed (a cut's consumers, say).
        calibration: a :class:`~netshrink.observe.Calibration`; batches are read until
            ``samples`` samples have been seen.
        output_loss: ``"auto"``, ``"kl"`` or ``"mse"`` (module doc).
        seed: the sampled labels' / directions' seed.
    """
    if output_loss not in OUTPUT_LOSSES:
        raise InvalidInputError(f"unknown output_loss {output_loss!r}; use one of {', '.join(OUTPUT_LOSSES)}")
    paths = list(dict.fromkeys(paths))
    sums: dict[str, torch.Tensor] = {}
    current = {"mask": None}

    def watch(path: str):
        def hook(module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                return None
            if not output.requires_grad:
                output.requires_grad_()
            channel = 1 if type(_layer(module)) is nn.Conv2d else -1
            output.register_hook(lambda grad, path=path, channel=channel: _accumulate(sums, path, grad, channel,
                                                                                       current["mask"]))
            return output

        return hook

    modules = dict(model.named_modules())
    handles = [modules[path].register_forward_hook(watch(path)) for path in paths]
    flags = [(module, module.training) for module in model.modules()]
    needs = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    seen = 0
    model.eval()
    model.requires_grad_(False)
    try:
        with torch.enable_grad():
            for batch in calibration:
                batch = batches.head(batch, samples - seen)
                batch = batches.to_device(batch, model_device(model))
                current["mask"] = batches.row_mask(batch)
                output = batches.call(model, batch)
                _sampled_loss(output, current["mask"], output_loss, generator).backward()
                seen += batches.size(batch)
                if seen >= samples:
                    break
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.training = flag
        for parameter, flag in needs:
            parameter.requires_grad_(flag)
    ranks = distributed.current()
    if ranks is not None:  # every rank's shard: the sums and counts over the ranks
        with ranks.during("summing the output sensitivities"):
            sums = dict(zip(paths, ranks.sum([sums.get(path) for path in paths])))
            (seen,) = ranks.sum_counts([seen])
        sums = {path: value for path, value in sums.items() if value is not None}
    missing = [path for path in paths if path not in sums]
    if missing:
        raise InvalidInputError(
            f"the model's output does not depend on {', '.join(missing)} on the calibration data, so their "
            "cuts cannot be weighed; compress the other cuts (layers=[...])"
        )
    return {path: sums[path] / seen for path in paths}


def _layer(module: nn.Module) -> nn.Module:
    return getattr(module, "layer", module)  # a sampler's inner layer


def _accumulate(sums: dict, path: str, grad: torch.Tensor, channel: int, mask: torch.Tensor | None) -> None:
    grad = grad.detach().to(torch.float64)
    if mask is not None and grad.ndim == mask.ndim + 1 and tuple(grad.shape[:-1]) == tuple(mask.shape):
        grad = grad[mask.to(grad.device)]
    rows = grad.movedim(channel, -1).reshape(-1, grad.shape[channel])
    products = rows.T @ rows if rows.shape[1] <= FULL_LIMIT else rows.square().sum(dim=0)
    sums[path] = products if path not in sums else sums[path] + products


def _output_tensor(output) -> tuple[torch.Tensor, bool]:
    """``(tensor, is_logits)``: the model output the loss is taken of."""
    logits = getattr(output, "logits", None)
    if isinstance(output, dict) and "logits" in output:
        logits = output["logits"]
    if isinstance(logits, torch.Tensor):
        return logits, True
    if isinstance(output, torch.Tensor):
        return output, output.ndim == 2
    for key in ("last_hidden_state", "pooler_output"):
        value = output.get(key) if isinstance(output, dict) else getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value, False
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0], output[0].ndim == 2
    raise InvalidInputError(
        f"the model returns a {type(output).__name__}; a budget weighs cuts by the output's sensitivity and "
        "needs a tensor, a tuple starting with one, or an output with logits or last_hidden_state"
    )


def _sampled_loss(output, mask: torch.Tensor | None, output_loss: str, generator: torch.Generator) -> torch.Tensor:
    """A loss whose gradient ``g`` at the consumers has ``E[g gᵀ]`` = the loss's Gauss–Newton Hessian."""
    tensor, is_logits = _output_tensor(output)
    kind = ("kl" if is_logits else "mse") if output_loss == "auto" else output_loss
    if mask is not None and tensor.ndim == mask.ndim + 1 and tuple(tensor.shape[:-1]) == tuple(mask.shape):
        tensor = tensor[mask.to(tensor.device)]
    tensor = tensor.reshape(-1, tensor.shape[-1]).to(torch.float64)
    if kind == "kl":
        log_probs = torch.log_softmax(tensor, dim=-1)
        labels = torch.multinomial(log_probs.detach().exp(), 1, generator=generator)
        return -log_probs.gather(1, labels).sum()
    directions = torch.randn(tensor.shape, dtype=tensor.dtype, device=tensor.device, generator=generator)
    return (tensor * directions).sum()
