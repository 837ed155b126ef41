"""The coverage matrix: one compress for Hugging Face transformers and modern CNNs.

For every model: λ = 0 (debiased) reproduces the original's outputs to 1e-5 relative;
``keep=0.5`` gives a smaller model that still runs; save + load from a fresh original
reproduces the compressed outputs; the report lists what was cut and what was skipped,
with reasons.
"""

from __future__ import annotations

import pytest
import torch

import netshrink
from netshrink.graph import find_cuts

import hf_models
from models import Bottleneck, ConvNeXtBlock, InvertedResidual

TOLERANCE = 1e-5


def _randomise_norms(model):
    """BatchNorm statistics away from the identity, so slicing them matters."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
    return model


def _cnn(cls):
    def make():
        torch.manual_seed(0)
        return _randomise_norms(cls()).eval()
    return make


def _images(count=3, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 8, 8, generator=generator) for _ in range(count)]


def _hf(factory):
    def make():
        torch.manual_seed(0)
        return factory().eval()
    return make


# name: (fresh original, calibration batches, the cut kinds expected, a layer expected among the skipped)
MODELS = {
    "bert": (_hf(hf_models.bert), hf_models.token_batches, {"heads", "neurons"}, "encoder.layer.0.output.dense"),
    "gpt2": (_hf(hf_models.gpt2), hf_models.token_batches, {"heads", "neurons"}, "transformer.h.0.mlp.c_proj"),
    "llama": (_hf(hf_models.llama), hf_models.token_batches, {"heads", "neurons"}, "model.layers.0.mlp.down_proj"),
    "vit": (_hf(hf_models.vit), hf_models.image_batches, {"heads", "neurons"}, "layers.0.mlp.fc2"),
    "mobilenet": (_cnn(InvertedResidual), _images, {"channels"}, "head"),
    "convnext": (_cnn(ConvNeXtBlock), _images, {"neurons"}, "pwconv2"),
    "bottleneck": (_cnn(Bottleneck), _images, {"channels"}, "fc"),
}


def _relative(a, b):
    return float((a - b).norm() / b.norm())


def _out(model, batch):
    if hasattr(model, "config"):  # a Hugging Face model: logits or last hidden state
        return hf_models.outputs(model, batch)
    with torch.no_grad():
        return model(batch)


@pytest.fixture(params=sorted(MODELS))
def case(request):
    make, data, kinds, skipped = MODELS[request.param]
    return request.param, make, data(), kinds, skipped


def test_lam_zero_reproduces_the_original(case):
    name, make, batches, _, _ = case
    model = make()
    result = netshrink.compress(model, batches, "group_lasso", lam=0.0)
    assert result.layers, name
    for batch in batches:
        assert _relative(_out(result.model, batch), _out(model, batch)) < TOLERANCE, name


def test_half_the_units_is_smaller_and_runs(case):
    name, make, batches, kinds, _ = case
    model = make()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    result = netshrink.compress(model, batches, "group_lasso", keep=0.5)
    assert result.params_after < result.params_before
    assert result.params_after == sum(p.numel() for p in result.model.parameters())
    assert {layer.kind for layer in result.layers} == kinds
    for layer in result.layers:
        assert layer.kept == -(-layer.total // 2), (name, layer.name)
    fresh = hf_models.token_batches(1, seed=5) if name in ("bert", "gpt2", "llama") else (
        hf_models.image_batches(1, seed=5) if name == "vit" else _images(1, seed=5))
    output = _out(result.model, fresh[0])
    assert torch.isfinite(output).all() and output.shape == _out(model, fresh[0]).shape
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items()), "model modified"
    assert type(result.model) is type(model)


def test_save_and_load_from_a_fresh_original(case, tmp_path):
    name, make, batches, _, _ = case
    model = make()
    result = netshrink.compress(model, batches, "magnitude", keep=0.5, refit=True)
    result.save(tmp_path / "small")
    loaded = netshrink.load(tmp_path / "small", make()).eval()
    for batch in batches[:1]:
        assert torch.allclose(_out(loaded, batch), _out(result.model, batch), atol=1e-6), name
    assert sum(p.numel() for p in loaded.parameters()) == result.params_after


def test_report_lists_cuts_and_skipped_layers_with_reasons(case):
    name, make, batches, kinds, skipped_layer = case
    model = make()
    cuts, skipped = find_cuts(model, example=batches[0])
    assert {cut.kind for cut in cuts} >= kinds
    reasons = {s.module: s.reason for s in skipped}
    assert skipped_layer in reasons and reasons[skipped_layer], name
    result = netshrink.compress(model, batches, "magnitude", keep=0.5)
    assert [layer.name for layer in result.layers] == [cut.name for cut in cuts]
    assert {s.module for s in result.skipped} == set(reasons)
    table = result.table()
    assert all(layer.name in table for layer in result.layers)


def test_head_cuts_have_the_attention_geometry():
    model = _hf(hf_models.llama)()
    cuts, _ = find_cuts(model, example=hf_models.token_batches(1)[0])
    heads = [cut for cut in cuts if cut.kind == "heads"]
    assert [cut.name for cut in heads] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    cut = heads[0]
    assert cut.width == 2 and cut.heads.per_unit == 2 and cut.heads.head_dim == 8  # 2 kv groups of 2 query heads
    assert cut.producers == tuple(f"model.layers.0.self_attn.{p}_proj" for p in "qkv")
    assert cut.consumers == ("model.layers.0.self_attn.o_proj",)
    assert cut.rows == (((0, 16),), ((0, 8),), ((0, 8),))
    swiglu = [cut for cut in cuts if cut.kind == "neurons"]
    assert swiglu[0].producers == ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj")
    gpt2_cuts, _ = find_cuts(_hf(hf_models.gpt2)(), example=hf_models.token_batches(1)[0])
    fused = gpt2_cuts[0]
    assert fused.kind == "heads" and fused.producers == ("transformer.h.0.attn.c_attn",)
    assert fused.rows == (((0, 8), (32, 8), (64, 8)),)  # the q, k and v thirds of the fused projection


def test_every_width_the_config_can_state_is_stated():
    model = _hf(hf_models.llama)()
    batches = hf_models.token_batches()
    result = netshrink.compress(model, batches, "magnitude", keep=0.5)
    assert result.config == {"intermediate_size": 20, "num_attention_heads": 2, "num_key_value_heads": 1}
    rebuilt = type(model)(result.model.config)
    rebuilt.load_state_dict(result.model.state_dict())
    assert torch.allclose(hf_models.outputs(rebuilt.eval(), batches[0]), hf_models.outputs(result.model, batches[0]))
    # BERT derives its head width from hidden_size / heads: the config states only the FFN width
    bert = netshrink.compress(_hf(hf_models.bert)(), batches, "magnitude", keep=0.5)
    assert bert.config == {"intermediate_size": 24}
    attention = bert.model.encoder.layer[0].attention.self
    assert (attention.num_attention_heads, attention.all_head_size) == (2, 16)
    assert bert.attributes["encoder.layer.0.attention.self"] == {"num_attention_heads": 2, "all_head_size": 16}


def test_a_compressed_causal_lm_still_generates():
    model = _hf(hf_models.gpt2)()
    batches = hf_models.token_batches()
    prompt = torch.randint(2, hf_models.VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    lossless = netshrink.compress(model, batches, "group_lasso", lam=0.0)
    expected = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(lossless.model.generate(prompt, max_new_tokens=6, do_sample=False), expected)
    small = netshrink.compress(model, batches, "group_lasso", keep=0.5).model
    assert small.generate(prompt, max_new_tokens=6, do_sample=False).shape == expected.shape


@pytest.mark.parametrize("factory", [hf_models.bert, hf_models.gpt2, hf_models.llama])
def test_every_method_runs_on_every_kind_it_has_a_meaning_for(factory):
    model = _hf(factory)()
    batches = hf_models.token_batches()
    reference = hf_models.outputs(model, batches[0])
    for method, options in [("random", {"keep": 0.5}), ("magnitude", {"keep": 0.5}), ("lowrank", {"keep": 0.5}),
                            ("group_lasso", {"keep": 0.5}), ("interpolative", {"keep": {"neurons": 0.5}})]:
        result = netshrink.compress(model, batches, method, **options)
        assert result.params_after < result.params_before, method
        assert hf_models.outputs(result.model, batches[0]).shape == reference.shape, method
        kinds = {layer.kind for layer in result.layers}
        assert kinds == ({"neurons"} if method == "interpolative" else {"neurons", "heads"}), method
    lossless = netshrink.compress(model, batches, "lowrank", keep=1.0)
    assert _relative(hf_models.outputs(lossless.model, batches[0]), reference) < TOLERANCE
