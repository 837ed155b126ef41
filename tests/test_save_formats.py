"""Saved compressions: loadable by transformers where the config states the widths,
and by netshrink.load without the original where the manifest names the source."""

import json

import pytest
import torch
from torch import nn

import netshrink
from netshrink.api import config_states_widths
from netshrink.errors import NetshrinkError
from netshrink.sources import load_source

transformers = pytest.importorskip("transformers")

from hf_models import bert, token_batches  # noqa: E402


def _hidden(model, batch):
    with torch.no_grad():
        return model(**batch).last_hidden_state


def test_ffn_compression_of_bert_loads_with_from_pretrained(tmp_path):
    model = bert().eval()
    batches = token_batches()
    result = netshrink.compress(model, batches, "group_lasso", keep={"neurons": 0.5})
    assert result.config == {"intermediate_size": 24} and config_states_widths(result.model)
    result.save(tmp_path / "small")
    loaded = transformers.AutoModel.from_pretrained(tmp_path / "small")
    assert type(loaded) is type(model)
    torch.testing.assert_close(_hidden(loaded, batches[0]), _hidden(result.model, batches[0]), rtol=1e-5, atol=1e-6)


def test_head_compression_of_bert_has_no_config_json_but_loads_from_its_source(tmp_path):
    model = bert().eval()
    model.save_pretrained(tmp_path / "bert")
    source = load_source(str(tmp_path / "bert"))
    batches = token_batches()
    result = netshrink.compress(source.model, batches, "group_lasso", keep={"heads": 0.5})
    assert not config_states_widths(result.model)  # BERT's config derives head_dim from the hidden size
    result.save(tmp_path / "small", source=source.recipe)
    assert not (tmp_path / "small" / "config.json").exists()
    loaded = netshrink.load(tmp_path / "small")
    torch.testing.assert_close(_hidden(loaded, batches[1]), _hidden(result.model, batches[1]), rtol=1e-5, atol=1e-6)


def test_load_without_a_source_asks_for_the_original(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    result = netshrink.compress(model, torch.randn(64, 4), "group_lasso", keep=0.5)
    result.save(tmp_path / "out")
    assert "source" not in json.loads((tmp_path / "out" / "manifest.json").read_text())
    with pytest.raises(NetshrinkError, match="pass a freshly built original"):
        netshrink.load(tmp_path / "out")
    assert not config_states_widths(result.model)
