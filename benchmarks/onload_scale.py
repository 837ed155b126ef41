"""Onloading at scale: a 3 B-parameter LLaMA compressed under a 6 GiB address-space limit.

Usage::

    python benchmarks/onload_scale.py [--quick] [--folder DIR] [--limit-gib G] [--output PATH]

A LLaMA-architecture decoder is built from its config (full run: hidden 3072, FFN 8192,
28 layers, 24 query heads in 8 key/value groups, vocabulary 32,000, untied head: 3.01 B
parameters, 12.0 GB in float32). No such pretrained model is reachable here, so its
weights are random (normal, std 0.02 as the architecture's own initialisation; norms 1),
written once to safetensors shards in ``--folder``; the run measures time and memory,
not accuracy. Calibration: 8 sequences of 128 random token ids.

In a fresh subprocess whose address space is limited to ``--limit-gib`` (default 6 GiB,
``RLIMIT_AS``: mapped files and thread stacks count too), the model is built with its
parameters on the meta device and ``netshrink.compress(..., onload=Onload(...))``
removes half of every FFN's neurons and half of every attention's key/value groups
(with their query heads), top-down, loading one decoder layer at a time. The method is
``magnitude`` with the least-squares refit of each consumer from the Gram statistics: the
subject here is onloading, and its solve is the cheapest of the Gram methods. Reported:
wall time, peak RSS (``ru_maxrss``), the largest block's weights, parameters before and
after, output size. ``--quick``: a 0.16 B model (hidden 1024, FFN 2816, 8 layers) under 3 GiB (a smoke test: its
weights would fit).

Numbers are printed and written as JSON to ``benchmarks/results/onload_scale.json``
(``onload_scale_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

FULL = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
            num_key_value_heads=8, vocab_size=32000)
QUICK = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=4, vocab_size=32000)
SEQUENCES, TOKENS = 8, 128


def config(sizes: dict):
    import transformers

    return transformers.LlamaConfig(**sizes, max_position_embeddings=2048, tie_word_embeddings=False,
                                    bos_token_id=0, eos_token_id=1, pad_token_id=1)


def write_checkpoint(folder: Path, sizes: dict) -> int:
    """Random weights in one safetensors shard per decoder layer (plus one for the rest);
    skipped when ``folder`` already holds them. Returns the parameter count."""
    import torch
    from safetensors.torch import save_file

    from netshrink.onload import parameters_on_meta

    import transformers

    with parameters_on_meta():
        skeleton = transformers.LlamaForCausalLM(config(sizes))
    shapes = {name: (tuple(p.shape), name.endswith("norm.weight")) for name, p in skeleton.named_parameters()}
    count = sum(int(torch.Size(shape).numel()) for shape, _ in shapes.values())
    marker = folder / "complete.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"sizes": sizes, "parameters": count}:
        return count
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config(sizes).to_json_string())
    generator = torch.Generator().manual_seed(0)
    groups: dict[str, list[str]] = {}
    for name in shapes:
        parts = name.split(".")
        key = f"layer-{int(parts[2]):03d}" if parts[:2] == ["model", "layers"] else "outside"
        groups.setdefault(key, []).append(name)
    for key, names in groups.items():
        tensors = {}
        for name in names:
            shape, is_norm = shapes[name]
            tensors[name] = torch.ones(shape) if is_norm else torch.randn(shape, generator=generator) * 0.02
        save_file(tensors, str(folder / f"{key}.safetensors"))
    marker.write_text(json.dumps({"sizes": sizes, "parameters": count}))
    return count


def child(folder: Path, output: Path, sizes: dict) -> None:
    """The measured run (in the limited subprocess): prints one JSON line."""
    start = time.perf_counter()
    import torch

    import netshrink
    from netshrink.onload import Onload, parameters_on_meta

    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with parameters_on_meta():
        model = transformers.LlamaForCausalLM(config(sizes)).eval()
    ids = torch.randint(2, sizes["vocab_size"], (SEQUENCES, TOKENS), generator=torch.Generator().manual_seed(1))
    calibration = [{"input_ids": ids[i:i + 2], "attention_mask": torch.ones(2, TOKENS, dtype=torch.long)}
                   for i in range(0, SEQUENCES, 2)]
    ready = time.perf_counter()
    result = netshrink.compress(model, calibration, "magnitude", keep={"neurons": 0.5, "heads": 0.5},
                                onload=Onload(folder, output, overwrite=True))
    done = time.perf_counter()
    print(json.dumps({
        "seconds_compress": done - ready, "seconds_total": done - start,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "params_before": result.params_before, "params_after": result.params_after,
        "cuts": len(result.layers), "kinds": sorted({layer.kind for layer in result.layers}),
        "output_bytes": sum(f.stat().st_size for f in output.iterdir()),
    }))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--folder", type=Path, default=None, help="where the random checkpoint is kept")
    parser.add_argument("--limit-gib", type=float, default=None)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    folder = args.folder or Path(os.environ.get("TMPDIR", "/tmp")) / f"netshrink-llama-{'quick' if args.quick else '3b'}"
    compressed = folder.with_name(folder.name + "-compressed")
    if args.child:
        child(folder, compressed, sizes)
        return 0
    limit = int((args.limit_gib or (3 if args.quick else 6)) * 1024**3)
    start = time.perf_counter()
    parameters = write_checkpoint(folder, sizes)
    written = time.perf_counter() - start
    print(f"checkpoint: {parameters:,} parameters, {sum(f.stat().st_size for f in folder.glob('*.safetensors')) / 1e9:.2f} GB "
          f"in {folder} ({written:.0f} s to write or check)", flush=True)

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.run([sys.executable, __file__, "--child", *(["--quick"] if args.quick else []),
                              "--folder", str(folder)], capture_output=True, text=True, preexec_fn=limited, env=env)
    row = {"config": sizes, "parameters": parameters, "checkpoint_bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors")),
           "limit_bytes": limit, "calibration": {"sequences": SEQUENCES, "tokens": TOKENS},
           "method": "magnitude + least-squares refit, keep 0.5 of FFN neurons and of key/value groups, top-down",
           "returncode": process.returncode}
    if process.returncode == 0:
        row.update(json.loads(process.stdout.strip().splitlines()[-1]))
        print(f"compressed {row['params_before']:,} -> {row['params_after']:,} parameters ({row['cuts']} cuts) in "
              f"{row['seconds_compress']:.0f} s; peak RSS {row['peak_rss_bytes'] / 1024**3:.2f} GiB under a "
              f"{limit / 1024**3:.1f} GiB address-space limit (weights {row['checkpoint_bytes'] / 1024**3:.1f} GiB)")
    else:
        row["error"] = process.stderr.strip().splitlines()[-5:]
        print("the limited run failed:\n" + "\n".join(row["error"]))
    row["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg": list(os.getloadavg())}
    from netshrink.atomic import atomic_write_text

    output = args.output or ROOT / "results" / ("onload_scale_quick.json" if args.quick else "onload_scale.json")
    atomic_write_text(output, json.dumps(row, indent=2), overwrite=True)
    print(f"wrote {output}")
    return 0 if process.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
