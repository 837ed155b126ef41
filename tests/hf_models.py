"""Tiny random-initialised Hugging Face models and token batches for the coverage tests."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 97


def bert():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=64)
    return transformers.BertModel(config)


def gpt2():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return transformers.GPT2LMHeadModel(config)


def llama():
    """Grouped-query attention: 4 query heads sharing 2 key/value heads; SwiGLU FFN."""
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=40, max_position_embeddings=64,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return transformers.LlamaForCausalLM(config)


def vit():
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                    image_size=16, patch_size=4, num_channels=3)
    return transformers.ViTModel(config)


def token_batches(count: int = 3, size: int = 8, length: int = 12, seed: int = 0, padded: bool = True) -> list[dict]:
    """``count`` batches of random tokens; with ``padded`` each row ends in 0–5 padding tokens."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(2, VOCAB, (size, length), generator=generator)
        mask = torch.ones(size, length, dtype=torch.long)
        if padded:
            lengths = torch.randint(length - 5, length + 1, (size,), generator=generator)
            mask = (torch.arange(length) < lengths[:, None]).long()
            ids = ids.masked_fill(mask == 0, 1)
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def image_batches(count: int = 3, size: int = 8, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 16, 16, generator=generator) for _ in range(count)]


def outputs(model, batch) -> torch.Tensor:
    """The model's main output on ``batch``: logits for an LM, else the last hidden state."""
    with torch.no_grad():
        result = model(**batch) if isinstance(batch, dict) else model(batch)
    logits = getattr(result, "logits", None)
    return logits if logits is not None else result.last_hidden_state
