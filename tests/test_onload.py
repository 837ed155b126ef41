"""Onloading: a meta-device model compressed block by block from its safetensors files
equals the same compression of the model in memory."""

from __future__ import annotations

import json

import pytest
import torch

import netshrink
from netshrink.errors import InvalidInputError
from netshrink.onload import Onload, merge_safetensors, parameters_on_meta

hf_models = pytest.importorskip("hf_models")


def _saved_llama(folder):
    torch.manual_seed(11)
    model = hf_models.llama().eval()
    model.save_pretrained(folder, safe_serialization=True)
    with parameters_on_meta():
        empty = hf_models.llama().eval()
    return model, empty


@pytest.mark.parametrize("method", ["group_lasso", "magnitude"])
def test_onloaded_compression_equals_in_memory(tmp_path, method):
    model, empty = _saved_llama(tmp_path / "checkpoint")
    data = hf_models.token_batches(count=3, size=8, length=12)
    keep = {"neurons": 0.5, "heads": 0.5}
    in_memory = netshrink.compress(model, data, method, keep=keep)
    onloaded = netshrink.compress(empty, data, method, keep=keep,
                                  onload=Onload(tmp_path / "checkpoint", tmp_path / "out"))
    assert [r.kept_indices for r in onloaded.layers] == [r.kept_indices for r in in_memory.layers]
    assert onloaded.params_after == in_memory.params_after < in_memory.params_before
    assert any(p.is_meta for p in onloaded.model.parameters())  # the blocks stayed on disk
    rebuilt = netshrink.load(tmp_path / "out", hf_models.llama())
    expected = in_memory.model.state_dict()
    for name, tensor in rebuilt.state_dict().items():
        scale = expected[name].abs().max().clamp_min(1e-30)
        assert ((tensor - expected[name]).abs().max() / scale) <= 1e-6, name
    assert torch.allclose(hf_models.outputs(rebuilt.eval(), data[0]), hf_models.outputs(in_memory.model, data[0]),
                          atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "manifest.json",
                                                                    "model.safetensors"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["params_after"] == onloaded.params_after


def test_memory_limit_too_small_for_one_block(tmp_path):
    _, empty = _saved_llama(tmp_path / "checkpoint")
    data = hf_models.token_batches(count=2, size=4, length=8)
    with pytest.raises(InvalidInputError, match=r"block 'model\.layers\.0' needs [\d,]+ bytes"):
        netshrink.compress(empty, data, "magnitude", keep=0.5,
                           onload=Onload(tmp_path / "checkpoint", tmp_path / "out", memory_limit=10_000))
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_onload_refusals(tmp_path):
    model, empty = _saved_llama(tmp_path / "checkpoint")
    data = hf_models.token_batches(count=2, size=4, length=8)
    onload = Onload(tmp_path / "checkpoint", tmp_path / "out")
    with pytest.raises(InvalidInputError, match="top-down"):
        netshrink.compress(empty, data, "magnitude", keep=0.5, chaining="parallel", onload=onload)
    with pytest.raises(InvalidInputError, match="meta device"):
        netshrink.compress(model, data, "magnitude", keep=0.5, onload=onload)
    with pytest.raises(InvalidInputError, match="no .safetensors"):
        netshrink.compress(empty, data, "magnitude", keep=0.5, onload=Onload(tmp_path, tmp_path / "out"))


def test_merge_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    first = {"a": torch.randn(3, 5), "b": torch.arange(7)}
    second = {"c": torch.randn(2, 2, dtype=torch.float64), "d": torch.zeros(0)}
    save_file(first, str(tmp_path / "1.safetensors"))
    save_file(second, str(tmp_path / "2.safetensors"))
    merge_safetensors([tmp_path / "1.safetensors", tmp_path / "2.safetensors"], tmp_path / "all.safetensors",
                      metadata={"format": "pt"})
    merged = load_file(str(tmp_path / "all.safetensors"))
    assert merged.keys() == {"a", "b", "c", "d"}
    for name, tensor in {**first, **second}.items():
        assert torch.equal(merged[name], tensor) and merged[name].dtype == tensor.dtype
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.safetensors"]
