"""netshrink.sweep: one Compression per budget, equal to separate compressions, statistics shared."""

import pytest
import torch

import netshrink
from netshrink.errors import InvalidInputError
from netshrink.methods import group_lasso as group_lasso_method
from netshrink.methods.group_lasso import GroupLasso
from netshrink.observe import GramStatistic

from models import Chain, ConvNet

CHAININGS = ("parallel", "bottom_up", "top_down")


def _chain(seed=0):
    torch.manual_seed(seed)
    model = Chain([8, 40, 30, 20, 4]).double().eval()
    return model, torch.randn(600, 8, dtype=torch.float64)


def _conv(seed=0):
    torch.manual_seed(seed)
    model = ConvNet().double().eval()
    return model, torch.randn(200, 2, 16, 16, dtype=torch.float64)


def _assert_same(swept, separate, rtol=1e-6):
    """Same kept units at every cut, the same options and report, weights to ``rtol``."""
    assert [l.kept_indices for l in swept.layers] == [l.kept_indices for l in separate.layers]
    assert [l.name for l in swept.layers] == [l.name for l in separate.layers]
    assert swept.options == separate.options and swept.method == separate.method
    assert (swept.params_before, swept.params_after) == (separate.params_before, separate.params_after)
    a, b = swept.model.state_dict(), separate.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=rtol * float(b[name].abs().max()) + 1e-12)
    for x, y in zip(swept.layers, separate.layers):
        assert x.error == pytest.approx(y.error, rel=1e-6, abs=1e-12)


class Counted:
    """A re-iterable of batches that counts the batches it yields (passes over the data)."""

    def __init__(self, data, batch=100):
        self.batches = list(data.split(batch))
        self.yielded = 0

    def __iter__(self):
        for batch in self.batches:
            self.yielded += 1
            yield batch


@pytest.mark.parametrize("chaining", CHAININGS)
def test_equals_separate_compressions(chaining):
    model, x = _chain(1)
    budgets = [{"lam": 0.3}, {"lam": 0.02}, {"lam": 0.1}, {"keep": 0.5}]
    swept = netshrink.sweep(model, x, "group_lasso", budgets, chaining=chaining)
    assert len(swept) == len(budgets)
    for budget, result in zip(budgets, swept):
        _assert_same(result, netshrink.compress(model, x, "group_lasso", chaining=chaining, **budget), rtol=0)


@pytest.mark.parametrize("chaining", CHAININGS)
def test_warm_started_sweep_reaches_the_same_minimisers(chaining):
    # At a tight duality gap every solve ends at the minimiser, from zero or from the
    # previous λ's solution: the same support, and the same weights with or without debiasing.
    model, x = _chain(2)
    lams = [0.5, 0.2, 0.05, 0.01, 0.002]
    for debias in (True, False):
        swept = netshrink.sweep(model, x, "group_lasso", [{"lam": lam} for lam in lams], chaining=chaining,
                                debias=debias, gap_tol=1e-10, warm_starts=True)
        for lam, result in zip(lams, swept):
            separate = netshrink.compress(model, x, "group_lasso", chaining=chaining, lam=lam, debias=debias,
                                          gap_tol=1e-10)
            _assert_same(result, separate, rtol=1e-6)


def test_warm_starts_take_fewer_iterations(monkeypatch):
    model, x = _chain(3)
    lams = [0.3, 0.1, 0.03, 0.01]
    iterations = []
    solve = group_lasso_method.group_lasso

    def counting(*args, **kwargs):
        result = solve(*args, **kwargs)
        iterations.append(result.iterations)
        return result

    monkeypatch.setattr(group_lasso_method, "group_lasso", counting)
    netshrink.sweep(model, x, "group_lasso", [{"lam": lam} for lam in lams], chaining="parallel", warm_starts=True)
    warm, iterations[:] = sum(iterations), []
    netshrink.sweep(model, x, "group_lasso", [{"lam": lam} for lam in lams], chaining="parallel")
    assert len(iterations) == 3 * len(lams) and warm < sum(iterations)


@pytest.mark.parametrize("chaining", CHAININGS)
@pytest.mark.parametrize("method, options, budgets", [
    ("magnitude", {"refit": True}, [{"keep": 0.3}, {"keep": 0.7}]),
    ("random", {"seed": 3}, [{"keep": 0.4}, {"keep": 0.6}]),
    ("lowrank", {}, [{"keep": 0.25}, {"keep": 0.5}]),
    ("interpolative", {}, [{"tol": 0.05}, {"keep": 0.5}]),
    ("group_lasso", {"weighting": "uniform"}, [{"lam": 0.05}, {"lam": 0.2}]),
])
def test_every_method_on_a_cnn_equals_separate_compressions(chaining, method, options, budgets):
    model, x = _conv(4)
    swept = netshrink.sweep(model, x, method, budgets, chaining=chaining, **options)
    for budget, result in zip(budgets, swept):
        _assert_same(result, netshrink.compress(model, x, method, chaining=chaining, **budget, **options), rtol=0)


@pytest.mark.parametrize("chaining", ["parallel", "bottom_up"])
def test_parallel_and_bottom_up_read_the_data_once(chaining):
    model, x = _chain(5)
    data = Counted(x)
    budgets = [{"lam": 0.3}, {"lam": 0.1}, {"lam": 0.03}, {"keep": 0.4}]
    swept = netshrink.sweep(model, data, "group_lasso", budgets, chaining=chaining)
    # the first batch (the example the graph is read from), then one observation pass
    assert data.yielded == 1 + len(data.batches)
    assert len(swept) == len(budgets)
    single = Counted(x)
    netshrink.compress(model, single, "group_lasso", chaining=chaining, lam=0.1)
    assert single.yielded == data.yielded  # one budget costs what a sweep of four costs


def test_global_budgets_share_one_set_of_loss_curves():
    model, x = _chain(5)
    one, three = Counted(x), Counted(x)
    netshrink.sweep(model, one, "group_lasso", [{"size": 0.5}], chaining="parallel")
    swept = netshrink.sweep(model, three, "group_lasso", [{"size": 0.5}, {"flops": 0.3}, {"size": 0.3}],
                            chaining="parallel")
    assert three.yielded == one.yielded  # the curves are observed once, whatever the budgets
    assert swept[0].ratio <= 0.5 and swept[2].ratio <= 0.3 and swept[1].budget["achieved"] <= 0.3


def _updates(monkeypatch) -> dict[int, int]:
    """Batches accumulated by Gram statistics, by the input width of the consumer."""
    seen: dict[int, int] = {}
    update = GramStatistic.update

    def counting(self, index, current, original=None):
        width = self.consumers[index].in_features
        seen[width] = seen.get(width, 0) + 1
        return update(self, index, current, original)

    monkeypatch.setattr(GramStatistic, "update", counting)
    return seen


def test_top_down_observes_the_first_cut_once(monkeypatch):
    model, x = _chain(6)
    budgets = [{"lam": 0.3}, {"lam": 0.1}, {"lam": 0.03}]
    seen = _updates(monkeypatch)
    swept = netshrink.sweep(model, Counted(x), "group_lasso", budgets, chaining="top_down")
    assert len({tuple(r.layers[0].kept_indices) for r in swept}) == 3  # every budget differs at cut 1
    batches = len(Counted(x).batches)
    # cut 1 (read by the 40-input layer) once; cuts 2 and 3 once per budget
    assert seen == {40: batches, 30: 3 * batches, 20: 3 * batches}


def test_top_down_shares_cuts_after_equal_decisions(monkeypatch):
    # lam=0 keeps every live unit of every cut: both budgets make the same decisions, so the
    # second reuses every statistic of the first
    model, x = _chain(7)
    seen = _updates(monkeypatch)
    swept = netshrink.sweep(model, Counted(x), "group_lasso", [{"lam": 0.0}, {"lam": 0.0}, {"keep": 1.0}],
                            chaining="top_down")
    batches = len(Counted(x).batches)
    assert seen == {40: batches, 30: batches, 20: batches}
    separate = netshrink.compress(model, Counted(x), "group_lasso", chaining="top_down", lam=0.0)
    for result in swept[:2]:
        _assert_same(result, separate, rtol=0)


def test_budgets_of_several_kinds_and_options_are_mixed():
    model, x = _conv(8)  # channels and neurons
    budgets = [{"keep": {"channels": 0.5}}, {"lam": 0.1}, {"keep": {"neurons": 0.4}}, {"size": 0.6},
               {"keep": 0.5}, {"lam": 0.4}]
    swept = netshrink.sweep(model, x, "group_lasso", budgets, chaining="parallel")
    for budget, result in zip(budgets, swept):
        _assert_same(result, netshrink.compress(model, x, "group_lasso", chaining="parallel", **budget), rtol=0)
    assert {l.kind for l in swept[0].layers} == {"channels"} and {l.kind for l in swept[2].layers} == {"neurons"}
    assert swept[3].options["size"] == 0.6 and swept[3].ratio <= 0.6


def test_one_layer_sweep_of_the_multitask_lasso():
    model, x = _chain(9)
    lams = [0.003, 0.03, 0.01]
    exact = netshrink.sweep(model, x, "multitask_lasso", [{"lam": lam} for lam in lams], layer="last")
    warm = netshrink.sweep(model, x, "multitask_lasso", [{"lam": lam} for lam in lams], layer="last",
                           warm_starts=True)
    for lam, result, started in zip(lams, exact, warm):
        separate = netshrink.compress(model, x, "multitask_lasso", layer="last", lam=lam)
        _assert_same(result, separate, rtol=0)
        _assert_same(started, separate, rtol=1e-5)  # its gap_tol is 1e-7: the same minimiser
        assert started.layers[0].details["converged"]


def test_empty_budgets_give_an_empty_list_without_reading_the_data():
    class Unreadable:
        def __iter__(self):
            raise AssertionError("the data was read")

    model, _ = _chain()
    assert netshrink.sweep(model, Unreadable(), "group_lasso", []) == []


@pytest.mark.parametrize("budgets, options, message", [
    ({"lam": [0.1, 0.2]}, {}, "budgets must be a list of budgets"),
    (0.1, {}, "budgets must be a list of budgets"),
    ([0.1], {}, r"budgets\[0\] is 0.1; a budget is a mapping of one of lam, keep, tol, size"),
    ([{"lam": 0.1}, {"lam": 0.1, "keep": 0.5}], {}, r"budgets\[1\] is \{'lam': 0.1, 'keep': 0.5\}"),
    ([{"debias": False}], {}, r"budgets\[0\] is \{'debias': False\}.*other options go once, beside budgets"),
    ([{}], {}, r"budgets\[0\] is \{\}"),
    ([{"tol": 0.1}], {}, r"budgets\[0\] = \{'tol': 0.1\}: method 'group_lasso' has no option tol"),
    ([{"lam": 1.5}], {}, r"budgets\[0\] = \{'lam': 1.5\}: lam must be in \[0, 1\]"),
    ([{"lam": 0.1}, {"keep": 0}], {}, r"budgets\[1\] = \{'keep': 0\}: keep=0 would leave"),
    ([{"size": 2}], {}, r"budgets\[0\] = \{'size': 2\}: size must be the fraction"),
    ([{"lam": None}], {}, r"budgets\[0\] = \{'lam': None\}: give exactly one of lam"),
    ([{"lam": 0.1}], {"lam": 0.2}, "lam sets the budget: give one value per budget in budgets"),
    ([{"lam": 0.1}], {"solver": "newton"}, r"budgets\[0\] = \{'lam': 0.1\}: unknown solver 'newton'"),
])
def test_bad_budgets_are_refused_before_any_work(budgets, options, message):
    class Unreadable:
        def __iter__(self):
            raise AssertionError("the data was read")

    model, _ = _chain()
    with pytest.raises(InvalidInputError, match=message):
        netshrink.sweep(model, Unreadable(), "group_lasso", budgets, **options)


def test_other_bad_arguments_are_refused(monkeypatch):
    model, x = _chain()
    with pytest.raises(InvalidInputError, match="sweep takes a method name .* carries its own budget"):
        netshrink.sweep(model, x, GroupLasso(lam=0.1), [{"lam": 0.1}])
    with pytest.raises(InvalidInputError, match="unknown chaining 'sideways'"):
        netshrink.sweep(model, x, "group_lasso", [{"lam": 0.1}], chaining="sideways")
    with pytest.raises(InvalidInputError, match="warm_starts must be True or False"):
        netshrink.sweep(model, x, "group_lasso", [{"lam": 0.1}], warm_starts="yes")
    with pytest.raises(InvalidInputError, match="model must be a torch.nn.Module"):
        netshrink.sweep("mlp7", x, "group_lasso", [{"lam": 0.1}])
    monkeypatch.setattr(netshrink.distributed, "current", lambda: object())  # a process group of 2 ranks
    with pytest.raises(InvalidInputError, match="sweep runs in one process; .* call compress at each budget"):
        netshrink.sweep(model, x, "group_lasso", [{"lam": 0.1}])


def test_the_original_model_is_untouched():
    model, x = _chain(10)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.train()
    for chaining in CHAININGS:
        netshrink.sweep(model, x, "group_lasso", [{"lam": 0.1}, {"lam": 0.3}], chaining=chaining)
    assert model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])


@pytest.mark.slow
def test_mlp7_sweep_equals_separate_compressions(trained_mlp7):
    from netshrink.data import calibration_images

    calibration = calibration_images(2000, seed=0)
    lams = [0.02, 0.005]
    for chaining in ("parallel", "top_down"):
        exact = netshrink.sweep(trained_mlp7, calibration, "group_lasso", [{"lam": lam} for lam in lams],
                                chaining=chaining)
        for lam, result in zip(lams, exact):
            _assert_same(result, netshrink.compress(trained_mlp7, calibration, "group_lasso", chaining=chaining,
                                                    lam=lam), rtol=0)
