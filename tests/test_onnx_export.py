"""ONNX export: onnxruntime agrees with PyTorch on other batch sizes and sequence lengths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from netshrink import onnx_export
from netshrink.errors import MissingDependencyError, NetshrinkError, OutputExistsError
from netshrink.onnx_export import check_onnx, export_onnx, file_size

TOLERANCE = 1e-4


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 5))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4),
    )
    with torch.no_grad():  # BatchNorm statistics as a trained network has them
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def bert():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)
    return transformers.BertModel(config)


def tokens(size: int, length: int, seed: int) -> dict:
    """Random tokens; every row but the first ends in 1 to 3 padding positions."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (size, length), generator=generator)
    lengths = torch.full((size,), length)
    if length > 3:
        lengths[1:] = length - torch.randint(1, 4, (size - 1,), generator=generator)
    mask = (torch.arange(length) < lengths[:, None]).long()
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask,
            "token_type_ids": torch.zeros(size, length, dtype=torch.long)}


def snapshot(model: nn.Module) -> tuple[dict, list[bool]]:
    return ({key: value.clone() for key, value in model.state_dict().items()},
            [module.training for module in model.modules()])


def assert_unchanged(model: nn.Module, before: tuple[dict, list[bool]]) -> None:
    state, flags = before
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    assert [module.training for module in model.modules()] == flags


@pytest.mark.parametrize("build, shape", [(mlp, (12,)), (cnn, (1, 12, 12))])
def test_tensor_models_agree_on_other_batch_sizes(tmp_path, build, shape):
    model = build()
    model.train()  # the export must use eval mode, and leave the flag alone
    before = snapshot(model)
    generator = torch.Generator().manual_seed(1)
    path = export_onnx(model, torch.randn(4, *shape, generator=generator), tmp_path / "model.onnx")
    assert path == tmp_path / "model.onnx" and file_size(path) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left behind
    assert_unchanged(model, before)
    others = [torch.randn(n, *shape, generator=generator) for n in (1, 7, 33)]
    assert check_onnx(path, model, others) < TOLERANCE
    assert_unchanged(model, before)


def test_example_of_one_sample_still_gives_a_dynamic_batch(tmp_path):
    model = mlp().eval()
    path = export_onnx(model, torch.randn(1, 12), tmp_path / "one.onnx")
    assert check_onnx(path, model, [torch.randn(5, 12), torch.randn(1, 12)]) < TOLERANCE


def test_inputs_labels_tuple_uses_the_inputs(tmp_path):
    model = mlp().eval()
    batch = (torch.randn(3, 12), torch.tensor([0, 1, 2]))
    path = export_onnx(model, batch, tmp_path / "m.onnx")
    assert check_onnx(path, model, [batch, (torch.randn(6, 12), torch.zeros(6))]) < TOLERANCE


def test_bert_with_padding_agrees_on_other_batch_sizes_and_lengths(tmp_path):
    import onnx

    model = bert()  # from __init__ in train mode (dropout)
    before = snapshot(model)
    path = export_onnx(model, tokens(3, 9, seed=0), tmp_path / "bert.onnx")
    assert_unchanged(model, before)
    graph = onnx.load(str(path)).graph
    assert [value.name for value in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] for value in graph.input]
    assert dims == [["batch", "sequence"]] * 3
    output = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert output == ["batch", "sequence", 32]  # last_hidden_state
    others = [tokens(1, 5, seed=1), tokens(6, 17, seed=2), tokens(2, 1, seed=3)]
    assert check_onnx(path, model, others) < TOLERANCE
    assert_unchanged(model, before)


def test_existing_path_is_refused_and_untouched(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    model = mlp()
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        export_onnx(model, torch.randn(2, 12), target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    export_onnx(model, torch.randn(2, 12), target, overwrite=True)
    assert target.read_bytes() != b"old"
    assert check_onnx(target, model, [torch.randn(3, 12)]) < TOLERANCE


def test_existing_path_is_refused_before_any_work(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")

    def fail(*args, **kwargs):
        raise AssertionError("exported although the output exists")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(OutputExistsError):
        export_onnx(mlp(), torch.randn(2, 12), target)


def test_missing_extra_names_the_install_command(tmp_path, monkeypatch):
    real = onnx_export.importlib.import_module

    def without_onnxscript(name, *args):
        if name == "onnxscript":
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *args)

    monkeypatch.setattr(onnx_export.importlib, "import_module", without_onnxscript)
    with pytest.raises(MissingDependencyError, match=r"pip install 'netshrink\[onnx\]'") as caught:
        export_onnx(mlp(), torch.randn(2, 12), tmp_path / "m.onnx")
    assert isinstance(caught.value, NetshrinkError) and isinstance(caught.value, ImportError)
    assert not (tmp_path / "m.onnx").exists()
