"""What one self-distillation step of the Mini FLUX recipe would cost on the full FLUX.1-dev: COMPUTED.

    python benchmarks/flux_calibration_cost.py [--batch 32] [--image 1024] [--text-tokens 512]

Nothing here runs FLUX.1-dev: the transformer is built on ``meta`` from the real config, the ternary
preset selects its linears (``quantize_`` on meta), and memory and FLOPs follow from the shapes:

- memory (bytes resident, before activations): QAT = float32 latent weights + their gradients + AdamW's
  two moments + the 2-bit codes and scales + everything the preset keeps dense (bf16), plus the teacher
  in bf16 when the recipe matches block outputs (it runs beside the student); scales-only = the packed
  student + float32 scales with gradients and AdamW state, plus the same teacher;
- FLOPs per step: every linear of every block, ``2 N K`` a token forward, twice that backward (input
  and weight gradients; scales-only skips the weight gradient), joint attention ``4 L^2 D`` forward and
  twice that backward, the teacher's extra forward for block matching; ``batch`` records of
  ``(image/16)^2 + text_tokens`` tokens. Time = FLOPs / (peak x assumed utilisation), labelled as such.

Writes ``benchmarks/results/flux_calibration_cost.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from torch_ternary import TernaryConfig, TernaryTensor, quantize_  # noqa: E402
from torch_ternary.testing.flux import FLUX_DEV_CONFIG, build_flux  # noqa: E402

#: Dense bf16 peak of an H100 / H200 SXM (TFLOPS, NVIDIA datasheet) and the utilisation assumed.
GPU_PEAK_TFLOPS, GPU_UTILISATION = 989.0, 0.4


def linear_shapes(model) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(ternary (N, K) list, dense block-linear (N, K) list) of the transformer's blocks."""
    ternary, dense = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "transformer_blocks" in name:
            (ternary if isinstance(mod.weight, TernaryTensor) else dense).append(tuple(mod.weight.shape))
    return ternary, dense


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="records per step (the recipe's batch)")
    parser.add_argument("--image", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--ranks", type=int, default=8, help="GPUs of the distributed rows (FSDP2 / DDP)")
    args = parser.parse_args()
    model = build_flux(FLUX_DEV_CONFIG, device="meta", dtype=torch.bfloat16)
    total_params = sum(p.numel() for p in model.parameters())
    quantize_(model, TernaryConfig())
    ternary, dense = linear_shapes(model)
    n_ternary = sum(n * k for n, k in ternary)
    n_scales = sum(n for n, _ in ternary)
    n_dense = total_params - n_ternary
    tokens = (args.image // 16) ** 2 + args.text_tokens
    width = FLUX_DEV_CONFIG["num_attention_heads"] * FLUX_DEV_CONFIG["attention_head_dim"]
    blocks = FLUX_DEV_CONFIG["num_layers"] + FLUX_DEV_CONFIG["num_single_layers"]
    linear_fwd = 2 * sum(n * k for n, k in ternary + dense) * tokens
    attn_fwd = 4 * tokens * tokens * width * blocks
    fwd = linear_fwd + attn_fwd
    packed = n_ternary // 4 + 4 * n_scales
    teacher = 2 * total_params
    gb = 1e9
    rows = {}
    n = args.ranks
    for name, train_bytes, per_rank_bytes, flops in (
        # QAT under FSDP2: latents, grads and AdamW moments sharded 1/N; codes + dense parts replicated
        ("qat", 16 * n_ternary + packed + 2 * n_dense, 16 * n_ternary / n + packed + 2 * n_dense,
         fwd + 2 * linear_fwd + 2 * attn_fwd),
        # scales only under DDP: everything replicated (the trainable state is tiny)
        ("scales_only", packed + 16 * n_scales + 2 * n_dense, packed + 16 * n_scales + 2 * n_dense,
         fwd + linear_fwd + 2 * attn_fwd),
    ):
        for block in (False, True):
            step_flops = args.batch * (flops + (fwd if block else 0))
            extra = teacher if block else 0
            rows[f"{name}{'_block_matching' if block else ''}"] = {
                "resident_gb_before_activations": round((train_bytes + extra) / gb, 1),
                f"per_rank_gb_before_activations_{n}_ranks": round((per_rank_bytes + extra) / gb, 1),
                "tflop_per_step": round(step_flops / 1e12, 1),
                "h100_seconds_per_step_at_40pct": round(step_flops / (GPU_PEAK_TFLOPS * 1e12 * GPU_UTILISATION), 1),
                f"h100_seconds_per_step_at_40pct_{n}_ranks": round(step_flops / n / (GPU_PEAK_TFLOPS * 1e12 * GPU_UTILISATION), 1),
            }
    for k, v in rows.items():
        print(f"{k:28s} {v['resident_gb_before_activations']:7.1f} GB ({v[f'per_rank_gb_before_activations_{n}_ranks']:.1f} "
              f"GB a rank on {n})  {v['tflop_per_step']:9.1f} TFLOP/step  {v['h100_seconds_per_step_at_40pct']:6.1f} s/step "
              f"on one H100 at 40 % of peak ({v[f'h100_seconds_per_step_at_40pct_{n}_ranks']:.1f} s on {n}) (computed)")
    path = write_results("flux_calibration_cost", {
        "label": "COMPUTED from the FLUX.1-dev config (meta device); nothing was run at this size",
        "batch": args.batch, "image": args.image, "ranks": n, "tokens_per_record": tokens, "parameters": total_params,
        "ternary_parameters": n_ternary, "scales": n_scales, "dense_parameters": n_dense,
        "gpu_peak_tflops_bf16": GPU_PEAK_TFLOPS, "gpu_utilisation_assumed": GPU_UTILISATION, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
