"""Loading SOURCE: zoo names, Hugging Face directories, module:factory with weights."""

import textwrap

import pytest
import torch
from safetensors.torch import save_file

from netshrink.errors import InvalidInputError, UnknownModelError
from netshrink.sources import build_architecture, load_source, load_weights

FACTORY = """
import torch
from torch import nn

def build():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

def wider():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

def not_a_model():
    return {"weights": 1}

model_instance = build()
number = 3
"""


@pytest.fixture
def package(tmp_path, monkeypatch):
    (tmp_path / "factorynet.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _trained(package):
    torch.manual_seed(0)
    from factorynet import build

    return build()


def test_factory_with_safetensors_and_state_dict_pt(package):
    trained = _trained(package)
    save_file(trained.state_dict(), package / "w.safetensors")
    torch.save(trained.state_dict(), package / "w.pt")
    x = torch.randn(5, 8)
    for name in ("w.safetensors", "w.pt"):
        source = load_source("factorynet:build", package / name)
        assert source.kind == "factory" and source.recipe == {"kind": "factory", "factory": "factorynet:build"}
        torch.testing.assert_close(source.model(x), trained(x), rtol=0, atol=0)
    rebuilt = build_architecture(source.recipe)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in trained.parameters()]


def test_pickled_model_is_refused(package):
    torch.save(_trained(package), package / "whole.pt")
    with pytest.raises(InvalidInputError, match="needs pickle.*netshrink never unpickles.*state_dict"):
        load_source("factorynet:build", package / "whole.pt")


def test_missing_and_corrupt_weights(package):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_source("factorynet:build", package / "nothing.safetensors")
    (package / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(InvalidInputError, match="not a readable safetensors file.*corrupt"):
        load_source("factorynet:build", package / "bad.safetensors")
    (package / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(InvalidInputError, match="bad.pt"):
        load_source("factorynet:build", package / "bad.pt")
    (package / "w.bin").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="suffix '.bin'"):
        load_source("factorynet:build", package / "w.bin")


def test_weights_that_do_not_fit(package):
    save_file(_trained(package).state_dict(), package / "w.safetensors")
    with pytest.raises(InvalidInputError, match="do not fit the architecture factorynet:wider.*size mismatch"):
        load_source("factorynet:wider", package / "w.safetensors")


def test_bad_factories(package):
    with pytest.raises(InvalidInputError, match="not a callable"):
        load_source("factorynet:number")
    with pytest.raises(InvalidInputError, match="not a callable"):
        load_source("factorynet:model_instance")
    with pytest.raises(InvalidInputError, match=r"returned a dict, not a torch.nn.Module"):
        load_source("factorynet:not_a_model")
    with pytest.raises(InvalidInputError, match="has no attribute 'missing'"):
        load_source("factorynet:missing")
    with pytest.raises(InvalidInputError, match="cannot import 'nosuchmodule_xyz'"):
        load_source("nosuchmodule_xyz:build")


def test_unknown_zoo_name_lists_every_kind_of_source():
    with pytest.raises(UnknownModelError, match="neither a zoo name.*mlp7.*Hugging Face.*module:factory"):
        load_source("mlp8")
    with pytest.raises(InvalidInputError, match="--weights is only for module:factory"):
        load_source("mlp7", "w.safetensors")


def test_huggingface_directory_round_trip(tmp_path):
    pytest.importorskip("transformers")
    from hf_models import bert

    model = bert().eval()
    model.save_pretrained(tmp_path / "bert")
    source = load_source(str(tmp_path / "bert"))
    assert source.kind == "huggingface" and type(source.model).__name__ == "BertModel"
    ids = torch.randint(2, 90, (2, 7))
    torch.testing.assert_close(source.model(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)
    rebuilt = build_architecture(source.recipe)
    assert type(rebuilt) is type(model) and rebuilt.config.intermediate_size == model.config.intermediate_size


def test_huggingface_directory_errors(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="without config.json"):
        load_source(str(tmp_path / "empty"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"model_type": "no-such-model-type"}')
    with pytest.raises(InvalidInputError, match="cannot be loaded by transformers.*no-such-model-type"):
        load_source(str(tmp_path / "odd"))


def test_load_weights_unwraps_a_checkpoint(tmp_path):
    state = {"a": torch.ones(2)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "c.pt")
    assert torch.equal(load_weights(tmp_path / "c.pt")["a"], state["a"])
    torch.save([1, 2], tmp_path / "l.pt")
    with pytest.raises(InvalidInputError, match="holds a list, not a state dict"):
        load_weights(tmp_path / "l.pt")
