"""Memory of one cut's compression (issue 13, item 3): the Gram statistic is never copied.

The properties behind ``benchmarks/cut_memory.py``, checked cheaply: the solvers and the
refit read the statistic's own ``(d, d)`` storage (centred in place and turned back), and
no operation of a decision allocates a tensor of more than a quarter of the Gram's bytes
(a Newton step's block, at most ``d/2`` columns) or of the refit's kept block, with the
block size of the helpers and the Newton floor shrunk so that a moderate ``d`` behaves
like a 25,088-wide layer.
"""

import importlib

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import netshrink.methods.group_lasso as group_lasso_method
import netshrink.methods.regression as regression
from netshrink.graph import find_cuts
from netshrink.linalg import blocks
from netshrink.methods import make_method
from netshrink.observe import Calibration, observe
from netshrink.rewrite import layer_at

group_lasso_solver = importlib.import_module("netshrink.linalg.group_lasso")  # the module, not the function


def _cut(width=240, outputs=30, samples=400, seed=0):
    """A Linear producer of ``width`` neurons, ReLU, a Linear consumer with a bias; float64."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, width), nn.ReLU(), nn.Linear(width, outputs)).double().eval()
    with torch.no_grad():
        model[0].bias.uniform_(-0.5, 1.0)  # some neurons nearly constant: a real intercept
    data = Calibration(torch.randn(samples, 20, dtype=torch.float64), batch_size=100)
    (cut,) = [c for c in find_cuts(model, "joint", data.first())[0] if tuple(c.producers) == ("0",)]
    return model, data, cut


def _decide(name, options, width=240):
    model, data, cut = _cut(width)
    method = make_method(name, **options)
    statistic = observe(model, [cut], data, method.statistic)[cut.name]
    consumers = [layer_at(model, p) for p in cut.consumers]
    producers = [layer_at(model, p) for p in cut.producers]
    return method, statistic, cut, consumers, producers


@pytest.mark.parametrize("options", [{"keep": 0.5}, {"lam": 0.05}])
def test_group_lasso_solves_and_refits_on_the_statistics_own_gram(monkeypatch, options):
    method, statistic, cut, consumers, producers = _decide("group_lasso", options)
    moments = [t.clone() for t in statistic.result(0)[:1]]
    storage = statistic.result(0)[0].untyped_storage().data_ptr()
    read = []

    def spy(function):
        def wrapped(gram, *args, **kwargs):
            read.append(gram.untyped_storage().data_ptr())
            return function(gram, *args, **kwargs)
        return wrapped

    solver = "group_lasso_keep" if "keep" in options else "group_lasso"
    monkeypatch.setattr(group_lasso_method, solver, spy(getattr(group_lasso_method, solver)))
    monkeypatch.setattr(regression, "lstsq_from_gram_block", spy(regression.lstsq_from_gram_block))
    decision = method.decide(cut, statistic, consumers, producers)
    assert read and all(pointer == storage for pointer in read)  # solver and refit: no copy
    # the statistic was centred in place for the intercept; reading it again turns it back
    torch.testing.assert_close(statistic.result(0)[0], moments[0], rtol=0, atol=1e-13 * float(moments[0].abs().max()))
    assert 0 < len(decision.kept) < cut.width


def test_centring_is_in_place_and_undone_by_result():
    _, statistic, *_ = _decide("group_lasso", {"keep": 0.5})
    gram = statistic.result(0)[0]
    moments = gram.clone()
    mean, _ = statistic.means(0)
    centred = statistic.centred(0)[0]
    assert centred.data_ptr() == gram.data_ptr()
    torch.testing.assert_close(centred, moments - torch.outer(mean, mean), rtol=0, atol=1e-14)
    assert statistic.centred(0)[0] is centred  # centred once, not twice
    torch.testing.assert_close(statistic.result(0)[0], moments, rtol=0, atol=1e-14)


class _LargestAllocation(TorchDispatchMode):
    """Records the bytes of the largest new storage any torch operation returns (views and
    in-place or ``out=`` results reuse their inputs' storage and count nothing)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(result):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.bytes = max(self.bytes, tensor.untyped_storage().nbytes())
        return result


@pytest.mark.parametrize("name, options", [("group_lasso", {"keep": 0.5}), ("group_lasso", {"lam": 0.02}),
                                           ("multitask_lasso", {"lam": 0.002})])
def test_no_operation_of_a_decision_allocates_more_than_a_quarter_of_the_gram(monkeypatch, name, options):
    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", 2048)  # blocks of ~3% of this Gram, as 64 MB of a 5 GB one
    monkeypatch.setattr(group_lasso_solver, "_NEWTON_MIN_COLUMNS", 0)  # Newton on supports of ≤ d/2 columns
    method, statistic, cut, consumers, producers = _decide(name, options, width=640)
    gram_bytes = statistic.result(0)[0].numel() * 8
    with _LargestAllocation() as allocations:
        decision = method.decide(cut, statistic, consumers, producers)
    largest, kept = allocations.bytes, len(decision.kept)
    assert 0 < kept < cut.width
    # the largest legitimate buffers: a Newton step's block, ≤ (d/2)², the refit's kept block and
    # the Lanczos basis of the step size (≤ 160 vectors of d: a quarter of this Gram, 0.6% of a 5 GB one)
    assert largest <= max(0.26, (kept / cut.width) ** 2 * 1.01) * gram_bytes, (largest / gram_bytes, kept)
