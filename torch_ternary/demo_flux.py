"""Ternarize a FLUX-architecture transformer with random weights, run it, and report sizes.

``python -m torch_ternary.demo_flux`` (or ``python -m torch_ternary.demo --flux``) builds diffusers' ``FluxTransformer2DModel`` from a small config
with random weights, applies ``quantize_(model, TernaryConfig())`` (the FLUX preset), runs one
step eager and under ``torch.compile``, saves and reloads it, and prints the size report of that
model and of the full FLUX.1-dev config (built on ``meta``: shapes only, no memory).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from . import TernaryConfig, load_quantized, quantize_, save_quantized
from .format.state_dict import payload_nbytes
from .testing.flux import FLUX_DEV_CONFIG, FLUX_SMALL_CONFIG, build_flux, example_inputs


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(|ref|^2 / |ref - approx|^2)`` in dB."""
    ref = reference.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - approx.double()).pow(2).sum().clamp_min(1e-30)))


def flux_dev_size_report(config: TernaryConfig | None = None) -> dict:
    """Bytes of FLUX.1-dev's transformer (bf16) dense vs ternary, in memory and in files (from shapes)."""
    model = build_flux(FLUX_DEV_CONFIG, device="meta", dtype=torch.bfloat16)
    report = quantize_(model, config or TernaryConfig())
    out = report.to_dict()
    for codec in ("2bit", "base3"):
        out[f"file_bytes_{codec}"] = payload_nbytes(model, codec)
        out[f"file_ratio_{codec}"] = report.bytes_before / out[f"file_bytes_{codec}"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    model = build_flux(FLUX_SMALL_CONFIG)
    inputs = example_inputs(FLUX_SMALL_CONFIG, height=16, width=16, text_tokens=32)
    with torch.no_grad():
        dense_out = model(**inputs)[0]
    t0 = time.perf_counter()
    report = quantize_(model, TernaryConfig())
    t_quant = time.perf_counter() - t0
    print(f"== small FLUX-architecture transformer ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params)")
    print(report)
    print(f"quantize_ took {t_quant:.2f} s")
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(**inputs)[0]
        print(f"eager step: {1e3 * (time.perf_counter() - t0):.1f} ms, output SQNR vs dense {sqnr_db(dense_out, out):.1f} dB "
              "(random weights: no calibration, see docs/quantization.md)")
        if not args.no_compile:
            compiled = torch.compile(model, fullgraph=True)
            t0 = time.perf_counter()
            c_out = compiled(**inputs)[0]
            print(f"torch.compile(fullgraph=True) first call {time.perf_counter() - t0:.1f} s, "
                  f"max |compiled - eager| = {(c_out - out).abs().max():.2e}")
    with tempfile.TemporaryDirectory() as tmp:
        path = save_quantized(model, Path(tmp) / "small_flux.safetensors")
        fresh = build_flux(FLUX_SMALL_CONFIG, device="meta")
        load_quantized(fresh, path)
        with torch.no_grad():
            same = torch.equal(fresh(**inputs)[0], out)
        print(f"saved {path.stat().st_size / 1e6:.3f} MB (base-3), reloaded into a meta-built model: bit-exact={same}")

    print("\n== FLUX.1-dev transformer (shapes on meta, bf16 baseline)")
    sizes = flux_dev_size_report()
    gb = 1e9
    print(f"params {sizes['params_total']:,}, ternary {100 * sizes['fraction_quantized']:.2f} % in {sizes['layers_converted']} linears")
    print(f"bf16 {sizes['bytes_before'] / gb:.2f} GB -> in memory (2-bit) {sizes['bytes_after'] / gb:.2f} GB: {sizes['ratio']:.2f}x")
    print(f"file 2-bit {sizes['file_bytes_2bit'] / gb:.2f} GB: {sizes['file_ratio_2bit']:.2f}x; "
          f"file base-3 {sizes['file_bytes_base3'] / gb:.2f} GB: {sizes['file_ratio_base3']:.2f}x")


if __name__ == "__main__":
    main()
