"""Size report of FLUX.1-dev's transformer, ternarized: in memory and in files, for each granularity.

The model is built on ``meta`` from the real FLUX.1-dev config. For the default config, every
ternarized linear is then materialized one at a time with random bf16 weights (std 0.02), quantized
with ``TernaryTensor.from_float`` and encoded with both codecs, so the bytes are measured on real
tensors and checked against the shape-only prediction; the other granularities use the prediction.

    python benchmarks/flux_size.py            # ~3 min on 2 CPU cores
    python benchmarks/flux_size.py --layers 20  # quick partial check (no results file)
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from torch_ternary import TernaryConfig, TernaryTensor, quantize_
from torch_ternary.format.base3 import encode_base3
from torch_ternary.format.state_dict import payload_nbytes
from torch_ternary.quantization.report import model_nbytes
from torch_ternary.testing.flux import FLUX_DEV_CONFIG, build_flux

sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import write_results  # noqa: E402

CONFIGS = {
    "per_channel (default)": TernaryConfig(),
    "per_tensor": TernaryConfig(granularity="per_tensor"),
    "per_group_128": TernaryConfig(granularity="per_group", group_size=128),
}


def predicted(config: TernaryConfig) -> dict:
    model = build_flux(FLUX_DEV_CONFIG, device="meta", dtype=torch.bfloat16)
    report = quantize_(model, config)
    out = {"params_total": report.params_total, "params_ternary": report.params_quantized,
           "layers_ternary": len(report.layers_converted), "bf16_bytes": report.bytes_before,
           "memory_bytes": report.bytes_after, "memory_ratio": report.ratio}
    for codec in ("2bit", "base3"):
        out[f"file_bytes_{codec}"] = payload_nbytes(model, codec)
        out[f"file_ratio_{codec}"] = report.bytes_before / out[f"file_bytes_{codec}"]
    return out


def measured(config: TernaryConfig, max_layers: int | None) -> dict:
    """Quantize every selected linear for real, one at a time, and add up the bytes."""
    model = build_flux(FLUX_DEV_CONFIG, device="meta", dtype=torch.bfloat16)
    dense_bf16 = model_nbytes(model)
    quantize_(model, config)  # on meta: selects the layers and fixes the shapes
    gen = torch.Generator().manual_seed(0)
    mem = f2 = f3 = 0
    layers = [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), TernaryTensor)]
    t0 = time.perf_counter()
    for i, (name, module) in enumerate(layers[:max_layers]):
        n, k = module.weight.shape
        w = (torch.randn(n, k, generator=gen) * 0.02).to(torch.bfloat16)
        tt = TernaryTensor.from_float(w, config.granularity, config.group_size)
        assert tt.packed.shape == module.weight.packed.shape and tt.scale.shape == module.weight.scale.shape, name
        scale_bytes = tt.scale.numel() * 4
        mem += tt.nbytes_packed
        f2 += tt.packed.numel() + scale_bytes
        f3 += encode_base3(tt.codes()).numel() + scale_bytes
        if i % 50 == 0:
            print(f"  {i}/{len(layers)} {name} [{n}x{k}] {time.perf_counter() - t0:.0f} s", flush=True)
    rest = sum(
        t.numel() * t.element_size() for t in model.state_dict(keep_vars=True).values() if not isinstance(t, TernaryTensor)
    )
    return {"layers_measured": min(len(layers), max_layers or len(layers)), "seconds": time.perf_counter() - t0,
            "bf16_bytes": dense_bf16, "memory_bytes": mem + rest, "file_bytes_2bit": f2 + rest,
            "file_bytes_base3": f3 + rest, "memory_ratio": dense_bf16 / (mem + rest),
            "file_ratio_2bit": dense_bf16 / (f2 + rest), "file_ratio_base3": dense_bf16 / (f3 + rest)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=None, help="measure only the first N layers (no results file)")
    args = parser.parse_args()
    table = {name: predicted(cfg) for name, cfg in CONFIGS.items()}
    for name, row in table.items():
        print(f"{name:22s} memory {row['memory_bytes'] / 1e9:.3f} GB ({row['memory_ratio']:.2f}x)  "
              f"file 2bit {row['file_ratio_2bit']:.2f}x  file base3 {row['file_bytes_base3'] / 1e9:.3f} GB ({row['file_ratio_base3']:.2f}x)")
    real = measured(CONFIGS["per_channel (default)"], args.layers)
    print(f"measured on random weights ({real['layers_measured']} layers, {real['seconds']:.0f} s): "
          f"memory {real['memory_ratio']:.3f}x, file 2bit {real['file_ratio_2bit']:.3f}x, base3 {real['file_ratio_base3']:.3f}x")
    if args.layers is None:
        pred = table["per_channel (default)"]
        for key in ("memory_bytes", "file_bytes_2bit", "file_bytes_base3"):
            assert real[key] == pred[key], (key, real[key], pred[key])
        path = write_results("flux_size", {"model": "FLUX.1-dev transformer (diffusers config), bf16 baseline",
                                           "predicted_from_shapes": table, "measured_random_weights_default": real})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
