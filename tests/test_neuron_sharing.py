"""Neuron-sharing experiment (issue 4, item 5; seed 002, Shenouda et al.): training, norms, counts, run().

The references are independent of the module: scikit-learn's MultiTaskLasso / Lasso for the
output layer, torch autograd with L-BFGS on the literal weight-decay objective, scipy's
scalar minimiser for the rescaling argument, and plain loops for the counts. Every test
draws its data from seeds of its own.
"""

import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from netshrink.errors import InvalidInputError, OutputExistsError
from netshrink.experiments import shenouda_sharing as ss

LAM = 5e-3
WIDTH = 32
TASKS = 3


@pytest.fixture(scope="module")
def small_case():
    """A small trial: d = 4, T = 3 outputs from a 2-neuron teacher, K = 32; joint and separate nets."""
    torch.set_num_threads(1)
    data = ss.teacher_tasks(np.random.default_rng(11), points=96, test_points=200, d=4, outputs=TASKS, teacher=2,
                            noise=0.02)
    U0, b0 = ss.initial_hidden_layer(np.random.default_rng(12), WIDTH, 4)
    joint = ss.train(data.X, data.Y, LAM, U0, b0, rounds=30, iters=30)
    separate = [ss.train(data.X, data.Y[:, [t]], LAM, U0, b0, rounds=30, iters=30) for t in range(TASKS)]
    return data, joint, separate


def _count(W, V, rtol=1e-3):
    """Active neurons by a plain loop over ‖V[:, k]‖·‖W[k]‖."""
    weights = [math.sqrt(sum(v * v for v in V[:, k])) * math.sqrt(sum(w * w for w in W[k])) for k in range(W.shape[0])]
    top = max(weights)
    return sum(w > rtol * top for w in weights)


def _loss(net, X, Y):
    return 0.5 * float(((net.predict(X) - Y) ** 2).sum()) / X.shape[0]


def test_joint_net_needs_fewer_neurons_than_the_separate_nets_together(small_case):
    data, joint, separate = small_case
    joint_count = _count(joint.net.W, joint.net.V)
    separate_counts = [_count(s.net.W, s.net.V) for s in separate]
    assert joint_count == int(ss.active_mask(joint.net.path_weights).sum())
    assert 1 <= joint_count < sum(separate_counts), (joint_count, separate_counts)
    # the networks are what train() promises: unit input directions, objective F as returned
    pairs = [(joint, data.Y)] + [(s, data.Y[:, [t]]) for t, s in enumerate(separate)]
    for result, targets in pairs:
        np.testing.assert_allclose(np.linalg.norm(result.net.W, axis=1), 1.0, rtol=1e-12)
        value = _loss(result.net, data.X, targets) + LAM * np.linalg.norm(result.net.V, axis=0).sum()
        assert math.isclose(result.objective, value, rel_tol=1e-10)
        assert all(a >= b - 1e-12 * abs(b) for a, b in zip(result.history, result.history[1:]))
    # the separate nets' active neurons side by side form a feasible joint net (if they fit in K)
    # whose objective is the sum of theirs: the trained joint net must do at least as well
    assert sum(separate_counts) <= WIDTH
    assert joint.objective <= sum(s.objective for s in separate) * (1 + 1e-6)


def test_output_layer_is_the_exact_group_lasso_solution(small_case):
    sklearn = pytest.importorskip("sklearn.linear_model")
    data, joint, separate = small_case
    for result, targets, model in ((joint, data.Y, sklearn.MultiTaskLasso),
                                   (separate[1], data.Y[:, [1]], sklearn.Lasso)):
        net = result.net
        H = np.maximum(data.X @ net.W.T + net.b, 0.0)
        reference = model(alpha=LAM, fit_intercept=True, tol=1e-14, max_iter=200_000)
        reference.fit(H, targets if targets.shape[1] > 1 else targets[:, 0])
        V_ref = reference.coef_.reshape(net.V.shape)
        ref_net = ss.ShallowNet(W=net.W, b=net.b, V=V_ref, c=np.atleast_1d(reference.intercept_))
        ref_value = _loss(ref_net, data.X, targets) + LAM * np.linalg.norm(V_ref, axis=0).sum()
        assert result.objective <= ref_value * (1 + 1e-9)
        np.testing.assert_allclose(net.V, V_ref, atol=1e-5 * np.abs(V_ref).max())
        assert np.array_equal(ss.active_mask(net.path_weights), ss.active_mask(np.linalg.norm(V_ref, axis=0)))


def test_trained_net_is_a_balanced_weight_decay_optimum(small_case):
    """From a random rescaling of the trained net, L-BFGS on J = loss + λ/2(‖W‖² + ‖V‖²) returns to
    ‖w_k‖ = ‖v_k‖ and finds no meaningfully lower J than the trained F."""
    data, joint, _ = small_case
    net = joint.net
    live = np.linalg.norm(net.V, axis=0) > 0
    scale = np.exp(np.random.default_rng(13).uniform(-1.0, 1.0, live.sum()))
    start = [net.W[live] * scale[:, None], net.b[live] * scale, net.V[:, live] / scale, net.c]
    params = [torch.tensor(np.ascontiguousarray(a), requires_grad=True) for a in start]
    X, Y = torch.from_numpy(data.X), torch.from_numpy(data.Y)

    def objective():
        W, b, V, c = params
        residual = torch.relu(X @ W.T + b) @ V.T + c - Y
        return 0.5 * (residual * residual).sum() / X.shape[0] + LAM / 2 * ((W * W).sum() + (V * V).sum())

    with torch.no_grad():  # the rescaling leaves the function alone, so J only drops to F at balance
        assert float(objective()) > joint.objective * 1.01
    optimizer = torch.optim.LBFGS(params, max_iter=1000, history_size=50, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-13, tolerance_change=1e-16)

    def closure():
        optimizer.zero_grad()
        value = objective()
        value.backward()
        return value

    optimizer.step(closure)
    W, _, V, _ = (p.detach().numpy() for p in params)
    ratio = np.linalg.norm(W, axis=1) / np.linalg.norm(V, axis=0)
    np.testing.assert_allclose(ratio, 1.0, atol=1e-3)
    with torch.no_grad():
        final = float(objective())
    assert joint.objective * (1 - 1e-3) <= final <= joint.objective * (1 + 1e-9)
    # balance() gives the balanced representative directly: J = F, same function
    Wb, bb, Vb = ss.balance(net.W, net.b, net.V)
    balanced = ss.ShallowNet(W=Wb, b=bb, V=Vb, c=net.c)
    np.testing.assert_allclose(balanced.predict(data.X), net.predict(data.X), rtol=1e-12, atol=1e-12)
    value = _loss(balanced, data.X, data.Y) + LAM * ss.weight_decay(Wb, Vb)
    assert math.isclose(value, joint.objective, rel_tol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_path_norm_is_the_smallest_weight_decay_over_rescalings(seed):
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(seed)
    K, d, T = 7, 5, 3
    W, b, V = rng.standard_normal((K, d)), rng.standard_normal(K), rng.standard_normal((T, K))
    V[:, 2] = 0.0  # a dead neuron costs nothing once rescaled away
    expected = 0.0
    for k in range(K):
        w2, v2 = float(W[k] @ W[k]), float(V[:, k] @ V[:, k])
        if v2 == 0:
            continue
        # neuron k's weight decay over rescalings s = e^t: ½(s²‖w‖² + ‖v‖²/s²)
        best = minimize_scalar(lambda t: 0.5 * (math.exp(2 * t) * w2 + math.exp(-2 * t) * v2),
                               bounds=(-20, 20), method="bounded", options={"xatol": 1e-12})
        expected += best.fun
    assert math.isclose(ss.path_norm(W, V), expected, rel_tol=1e-9)
    Wb, bb, Vb = ss.balance(W, b, V)
    assert math.isclose(ss.weight_decay(Wb, Vb), ss.path_norm(W, V), rel_tol=1e-12)
    assert math.isclose(ss.path_norm(Wb, Vb), ss.path_norm(W, V), rel_tol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(Wb, axis=1), np.linalg.norm(Vb, axis=0), rtol=1e-12)
    X = rng.standard_normal((50, d))
    c = rng.standard_normal(T)
    np.testing.assert_allclose(ss.ShallowNet(Wb, bb, Vb, c).predict(X), ss.ShallowNet(W, b, V, c).predict(X),
                               rtol=1e-12, atol=1e-12)
    for _ in range(20):  # any other rescaling costs more
        s = np.exp(rng.uniform(-2, 2, K))
        assert ss.weight_decay(W * s[:, None], V / s) >= ss.path_norm(W, V) * (1 - 1e-12)


def test_active_count_and_outputs_served_by_hand():
    weights = np.array([0.0, 5e-4, 1e-3, 2e-3, 1.0, 0.3])
    assert ss.active_mask(weights).tolist() == [False, False, False, True, True, True]  # 1e-3·max is not above
    assert ss.active_mask(weights, rtol=0.5).tolist() == [False, False, False, False, True, False]
    assert not ss.active_mask(np.zeros(4)).any()
    rng = np.random.default_rng(7)
    for _ in range(50):  # brute force on random scales, with exact zeros
        w = np.abs(rng.standard_normal(30)) * 10.0 ** rng.uniform(-6, 0, 30) * (rng.random(30) > 0.3)
        rtol = 10.0 ** rng.uniform(-4, -1)
        top = max(w)
        assert ss.active_mask(w, rtol).tolist() == [x > rtol * top for x in w]
        assert ss.active_mask(w * 1e8, rtol).tolist() == ss.active_mask(w, rtol).tolist()
    V = np.array([[1.0, 0.0, 0.5, -0.05],
                  [-0.2, 0.0, 0.5, 1.0],
                  [0.09, 0.0, -0.5, 0.1]])
    active = np.array([True, False, True, True])
    # column 0: 1, 0.2 (≥ 0.1) and 0.09 (< 0.1) → 2; column 2: all equal → 3; column 3: 0.05 < 0.1 ≤ 0.1 → 2
    assert ss.outputs_served(V, active).tolist() == [2, 3, 2]
    assert ss.outputs_served(V, active, rtol=0.5).tolist() == [1, 3, 1]


def test_teacher_tasks_are_combinations_of_one_teacher():
    data = ss.teacher_tasks(np.random.default_rng(5), points=20000, test_points=30, d=6, outputs=4, teacher=3,
                            noise=0.1)
    np.testing.assert_allclose(np.linalg.norm(data.teacher_U, axis=1), 1.0, rtol=1e-12)
    assert data.teacher_A.shape == (4, 3) and np.all(np.abs(data.teacher_a) <= 1)
    features = np.maximum(data.X_test @ data.teacher_U.T - data.teacher_a, 0.0)
    np.testing.assert_allclose(data.Y_test, features @ data.teacher_A.T, rtol=1e-12, atol=1e-12)
    clean = np.maximum(data.X @ data.teacher_U.T - data.teacher_a, 0.0) @ data.teacher_A.T
    noise = data.Y - clean
    np.testing.assert_allclose(noise.std(axis=0) / clean.std(axis=0), 0.1, rtol=0.03)
    assert abs(np.corrcoef(noise[:, 0], noise[:, 1])[0, 1]) < 0.05  # independent per output
    assert math.isclose(data.teacher_path_norm, np.linalg.norm(data.teacher_A, axis=0).sum(), rel_tol=1e-12)


def test_training_is_deterministic():
    data = ss.teacher_tasks(np.random.default_rng(21), points=40, test_points=5, d=3, outputs=2, teacher=2,
                            noise=0.05)
    U0, b0 = ss.initial_hidden_layer(np.random.default_rng(22), 10, 3)
    first, second = (ss.train(data.X, data.Y, 1e-2, U0, b0, rounds=3, iters=10) for _ in range(2))
    for a, b in zip((first.net.W, first.net.b, first.net.V, first.net.c),
                    (second.net.W, second.net.b, second.net.V, second.net.c)):
        assert np.array_equal(a, b)


TINY = ss.Settings(seed=3, trials=2, d=3, outputs=2, teacher=2, points=48, test_points=50, noise=0.02, width=12,
                   lam=1e-2, rounds=4, iters=10, match_steps=2)


def test_run_writes_figures_numbers_and_refuses_to_overwrite(tmp_path, monkeypatch):
    import matplotlib.image

    monkeypatch.setattr(ss, "QUICK", TINY)
    out = tmp_path / "sharing"
    summary = ss.run(out, quick=True)
    assert (out / "summary.md").read_text(encoding="utf-8") == summary
    assert sorted(p.name for p in out.iterdir()) == [
        "counts.json", "counts.png", "outputs_served.json", "outputs_served.png", "run.json", "shared_weights.json",
        "shared_weights.png", "summary.md"]
    for stem in ("counts", "shared_weights", "outputs_served"):
        image = matplotlib.image.imread(out / f"{stem}.png")
        assert image.ndim == 3 and image.std() > 0.01, stem
        assert f"({stem}.png)" in summary
    counts = json.loads((out / "counts.json").read_text(encoding="utf-8"))
    assert len(counts["trials"]) == len(counts["trial_records"]) == 2
    for trial, record in zip(counts["trials"], counts["trial_records"]):
        separate = [s["active"] for s in record["separate"]]
        assert trial["joint"] == record["joint"]["active"] == sum(w > 1e-3 for w in record["joint"]["weights"])
        assert trial["separate"] == separate and trial["separate_sum"] == sum(separate)
        assert trial["shares"] == (trial["joint"] < trial["separate_sum"])
        assert f"| {trial['index']} | {trial['joint']} | {max(separate)} | {sum(separate)} | " in summary
        assert all(lam <= TINY.lam for lam in trial["matched_lam"])
    shared = counts["shared_trials"]
    assert f"fewer active neurons than the separate networks together in {shared} of 2 trials" in summary
    served = json.loads((out / "outputs_served.json").read_text(encoding="utf-8"))
    assert sum(served["histogram"].values()) == served["neurons"] == sum(t["joint"] for t in counts["trials"])
    weights = json.loads((out / "shared_weights.json").read_text(encoding="utf-8"))
    assert len(weights["joint_abs_V"]) == TINY.outputs
    assert len(weights["joint_abs_V"][0]) == counts["trials"][0]["joint"]
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["mode"] == "quick"
    with pytest.raises(OutputExistsError):
        ss.run(out, quick=True)
    ss.run(out, quick=True, overwrite=True)
    again = json.loads((out / "counts.json").read_text(encoding="utf-8"))
    assert again["trials"] == counts["trials"]  # seeded: the same numbers
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failing_run_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(data):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(ss, "QUICK", replace(TINY, trials=1))
    monkeypatch.setattr(ss, "_draw_served", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        ss.run(tmp_path / "sharing", quick=True)
    assert list(tmp_path.iterdir()) == []


_DATA = dict(points=10, test_points=5, d=2, outputs=2, teacher=1, noise=0.0)
BAD = [
    (lambda: ss.trial_records(replace(TINY, outputs=1)), "settings.outputs must be an integer ≥ 2"),
    (lambda: ss.trial_records(replace(TINY, lam=0.0)), "settings.lam (λ) must be a finite number > 0"),
    (lambda: ss.trial_records(replace(TINY, lam=math.nan)), "settings.lam (λ) must be a finite number > 0"),
    (lambda: ss.trial_records(replace(TINY, noise=-0.1)), "noise must be a finite number ≥ 0"),
    (lambda: ss.trial_records(replace(TINY, width=0)), "settings.width must be a positive integer"),
    (lambda: ss.trial_records(replace(TINY, trials=2.0)), "settings.trials must be a positive integer"),
    (lambda: ss.trial_records(replace(TINY, match_steps=-1)), "settings.match_steps must be an integer ≥ 0"),
    (lambda: ss.trial_records(replace(TINY, seed=-1)), "settings.seed must be an integer ≥ 0"),
    (lambda: ss.trial_records({"seed": 1}), "settings must be a Settings"),
    (lambda: ss.teacher_tasks(np.random.default_rng(0), **{**_DATA, "teacher": 0}), "teacher must be a positive"),
    (lambda: ss.train(np.ones((4, 2)), np.ones((5, 1)), 0.1, np.eye(2), np.zeros(2), 1, 1),
     "X must be (N, d) and Y (N, T) with the same N"),
    (lambda: ss.train(np.ones((4, 2)), np.ones((4, 1)), 0.1, np.eye(3), np.zeros(3), 1, 1), "U0 must be (K, 2)"),
    (lambda: ss.train(np.ones((4, 2)), np.ones((4, 1)), 0.1, np.zeros((2, 2)), np.zeros(2), 1, 1),
     "U0 has a zero row"),
    (lambda: ss.train(np.ones((4, 2)), np.full((4, 1), np.nan), 0.1, np.eye(2), np.zeros(2), 1, 1),
     "Y must be nonempty and finite"),
    (lambda: ss.train(np.ones((4, 2)), np.ones((4, 1)), -1.0, np.eye(2), np.zeros(2), 1, 1),
     "lam (λ) must be a finite number > 0"),
    (lambda: ss.train(np.ones((4, 2)), np.ones((4, 1)), 0.1, np.eye(2), np.zeros(2), 0, 1),
     "rounds must be a positive integer"),
    (lambda: ss.train(np.ones((4, 2)), np.ones((4, 1)), 0.1, np.eye(2), np.zeros(2), 1, 1, V0=np.ones((2, 2))),
     "V0 must be (1, 2)"),
    (lambda: ss.active_mask(np.array([1.0, -0.5])), "weights must be a finite non-negative vector"),
    (lambda: ss.active_mask(np.ones(3), rtol=1.5), "rtol must be in (0, 1)"),
    (lambda: ss.outputs_served(np.ones((2, 3)), np.ones(2, dtype=bool)), "V must be (T, K) and active (K,)"),
    (lambda: ss.outputs_served(np.zeros((2, 3)), np.ones(3, dtype=bool)), "an active neuron has a zero column"),
    (lambda: ss.path_norm(np.ones((3, 2)), np.ones((2, 4))), "W must be (K, d) and V (T, K) with the same K"),
    (lambda: ss.balance(np.zeros((2, 2)), np.zeros(2), np.ones((1, 2))), "neuron 0 has W[k] = 0 but V[:, k] ≠ 0"),
    (lambda: ss.balance(np.ones((2, 2)), np.zeros(3), np.ones((1, 2))), "b must have shape (2,)"),
]


@pytest.mark.parametrize("call, message", BAD, ids=[message for _, message in BAD])
def test_bad_input_raises_a_specific_error(call, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        call()
