"""Serving benchmark: the timer, the rows of bench() and the table (no speed is asserted)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netshrink.bench import BenchRow, bench, table
from netshrink.timing import latency_ms
from netshrink.errors import InvalidInputError


class ScriptedClock:
    """A clock that advances only when the timed function says so: exact, whatever the load."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_latency_is_the_median_after_warmup(monkeypatch):
    clock = ScriptedClock()
    monkeypatch.setattr("netshrink.bench.time.perf_counter", clock)
    durations = iter([5.0, 5.0, 0.003, 0.001, 0.050, 0.002, 0.004])  # two slow warm-up calls, then 5 timed

    def step():
        clock.now += next(durations)

    assert latency_ms(step, repeats=5, warmup=2) == pytest.approx(3.0)  # median of 3, 1, 50, 2, 4 ms
    with pytest.raises(StopIteration):
        step()  # exactly 7 calls were made


@pytest.mark.parametrize("repeats, warmup", [(0, 1), (3, -1), (2.5, 1)])
def test_latency_rejects_bad_counts(repeats, warmup):
    with pytest.raises(InvalidInputError):
        latency_ms(lambda: None, repeats=repeats, warmup=warmup)


def mlps() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    original = nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 4))
    compressed = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    return original, compressed


@pytest.mark.parametrize("onnx", [False, True])
def test_bench_rows_and_table(tmp_path, onnx):
    if onnx:
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    original, compressed = mlps()
    original.train()
    threads = torch.get_num_threads()
    x = torch.randn(64, 16)
    result = bench(original, compressed, x[:1], x, repeats=3, warmup=1, onnx=onnx, workdir=tmp_path)
    assert torch.get_num_threads() == threads  # restored
    assert original.training and not any(p.grad is not None for p in original.parameters())
    params = (16 * 48 + 48 + 48 * 4 + 4, 16 * 12 + 12 + 12 * 4 + 4)
    assert (result["params_original"], result["params_compressed"]) == params
    assert result["param_ratio"] == pytest.approx(params[1] / params[0])
    assert result["threads"] == 1
    runtimes = ["pytorch", "onnxruntime"] if onnx else ["pytorch"]
    assert [(row["runtime"], row["batch"]) for row in result["rows"]] == [(r, b) for r in runtimes for b in (1, 64)]
    for row in result["rows"]:
        assert set(row) == set(BenchRow.__dataclass_fields__)
        assert row["original_ms"] > 0 and row["compressed_ms"] > 0
        assert row["speedup"] == pytest.approx(row["original_ms"] / row["compressed_ms"])
        for key in ("original_peak_mib", "compressed_peak_mib"):
            assert math.isnan(row[key]) or row[key] >= 0
    if onnx:
        assert result["onnx_error"]["original"] < 1e-4 and result["onnx_error"]["compressed"] < 1e-4
        assert result["onnx_bytes"]["original"] > result["onnx_bytes"]["compressed"] > 0
        assert (tmp_path / "original.onnx").exists()
    text = table(result)
    assert "onnxruntime" in text if onnx else "onnxruntime" not in text
    lines = text.splitlines()
    assert len(lines) == 3 + len(result["rows"])
    for row, line in zip(result["rows"], lines[3:]):
        ratio = row["compressed_ms"] / row["original_ms"]
        assert line.split()[:5] == [row["runtime"], str(row["batch"]), f"{row['original_ms']:.3f}",
                                    f"{row['compressed_ms']:.3f}", f"{ratio:.3f}"]
        assert f"{result['param_ratio']:.3f}" in line and f"{ratio - result['param_ratio']:+.3f}" in line


def test_bench_with_keyword_batches(tmp_path):
    class Keyword(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.mlp = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 8))

        def forward(self, input_ids, attention_mask):
            return self.mlp(self.embed(input_ids)) * attention_mask.unsqueeze(-1)

    def batch(size, length):
        return {"input_ids": torch.randint(0, 50, (size, length)),
                "attention_mask": torch.ones(size, length, dtype=torch.long)}

    torch.manual_seed(0)
    result = bench(Keyword(32), Keyword(8), batch(1, 5), batch(64, 11), repeats=2, warmup=0, onnx=False)
    assert [row["batch"] for row in result["rows"]] == [1, 64]


def test_peak_memory_sees_the_weights():
    from netshrink.bench import peak_mib_pytorch

    big = nn.Linear(2048, 2048)  # 16 MiB of weights
    peak = peak_mib_pytorch(big, torch.randn(1, 2048))
    if math.isnan(peak):
        pytest.skip("peak memory is not measurable here (needs Linux /proc and fork)")
    assert 14 < peak < 64
