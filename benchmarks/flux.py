"""The full FLUX.1-dev transformer at 1024²: bf16 vs ternary (16-bit, int8 and fp8 activations) vs fp8.

One transformer step (batch 1, 4096 image + 512 text tokens: 74 TFLOP) for each variant, eager and
compiled (regional: every transformer block compiled with ``fullgraph=True``, as diffusers'
``compile_repeated_blocks``):

* ``bf16``: the dense model (the baseline);
* ``ternary_16bit``, ``ternary_int8``, ``ternary_fp8``: ``quantize_(TernaryConfig(activations=...))``
  (the FLUX preset: every linear of the 57 blocks, 494 of them);
* ``peer_fp8``: fp8 e4m3 weights with row-wise scales and dynamic per-token fp8 activations on the
  same linears: torchao's ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` when
  ``import torchao`` works, else this file's ``torch._scaled_mm`` baseline (:class:`Fp8RowwiseLinear`),
  labelled as such.

Measured: per-step latency (median of CUDA-event timed steps after warm-up), peak memory of one
forward (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; the weights are part
of it), weight bytes. Random weights: the model is built on ``meta`` and materialized block by block
on the GPU in bf16 (never 24 GB of host RAM), each block quantized right after it is built.

    python benchmarks/flux.py                                # GPU: every variant and mode (~10 min on an H100)
    python benchmarks/flux.py --variants bf16 ternary_int8 --modes eager
    python benchmarks/flux.py --merge a.json b.json          # combine runs made in several calls
    python benchmarks/flux.py --plot benchmarks/results/flux_<gpu>.json   # plot + ratio table, no GPU needed
    python benchmarks/flux.py --config small                 # CPU smoke run of the same code paths
    python benchmarks/flux.py --sqnr                         # CPU: A8's accuracy price (FLUX_SMALL_CONFIG)
    python benchmarks/flux.py --mini                         # A8 quality on the trained Mini FLUX (when shipped)
    python benchmarks/flux.py --modes eager --steps 1 --warmup 1 --plan   # no GPU: what a run would do (JSON)

Activation memory: forwards run under ``torch.inference_mode``; the ternary paths free their decode
workspace after every GEMM and cap the int8 GEMM's int32 accumulator at 64 MiB (row chunks);
``--stream-mlp N`` further runs the MLP branch of every block N tokens at a time (all variants
alike; costs the ternary paths one weight decode per chunk). See docs/benchmarks.md.

Results: ``benchmarks/results/flux_<gpu>.json`` (+ ``.png`` with matplotlib), ``--sqnr``:
``benchmarks/results/a8_sqnr_cpu.json``. Without a GPU the default config exits with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, environment, pyplot, save_figure, write_results  # noqa: E402

VARIANTS = ("bf16", "ternary_16bit", "ternary_int8", "ternary_fp8", "peer_fp8")
MODES = ("eager", "compiled")
ACTIVATIONS = {"ternary_16bit": "16bit", "ternary_int8": "int8", "ternary_fp8": "fp8"}
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")
#: 1024² image -> 128x128 VAE latents -> 64x64 packed 2x2 patches = 4096 image tokens.
PIXELS_PER_TOKEN = 16


# ===================================================================================== build
def materialize_(module: nn.Module, device, dtype: torch.dtype, seed: int) -> nn.Module:
    """Give a ``meta`` module real, seeded random weights on ``device`` in ``dtype`` (in place).

    Modules with ``reset_parameters`` (linears, layer norms, embeddings) use their own init
    (``nn.Linear``: U(-1/sqrt(K), 1/sqrt(K)), as a freshly built diffusers model); other 1-D
    ``weight`` / ``bias`` parameters (RMSNorm) become ones / zeros, anything else N(0, 0.02).
    """
    module.to_empty(device=device)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    if torch.device(device).type == "cuda":
        torch.cuda.manual_seed(seed)
    try:
        with torch.no_grad():
            for sub in module.modules():
                if callable(getattr(sub, "reset_parameters", None)):
                    sub.reset_parameters()
                    continue
                for name, p in sub.named_parameters(recurse=False):
                    if p.dim() == 1 and name == "weight":
                        p.fill_(1.0)
                    elif p.dim() == 1 and name == "bias":
                        p.zero_()
                    else:
                        p.normal_(0.0, 0.02)
    finally:
        torch.random.set_rng_state(gen_state)
    return module.to(dtype)


class Fp8RowwiseLinear(nn.Module):
    """The fp8 peer when torchao is missing: ``torch._scaled_mm`` with row-wise scales.

    Weight: float8_e4m3fn ``[N, K]`` with a float32 scale per output channel (absmax / 448);
    activations: per-token absmax / 448, cast to e4m3 in plain torch ops (fused by ``torch.compile``);
    bias and scales in ``_scaled_mm``'s epilogue; bf16 out; ``use_fast_accum=True`` (torchao's
    inference default).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        fp8 = torch.float8_e4m3fn
        w = linear.weight.detach().float()
        sw = (w.abs().amax(dim=1, keepdim=True) / 448.0).clamp_min(1e-12)
        self.register_buffer("weight_fp8", (w / sw).clamp(-448, 448).to(fp8))
        self.register_buffer("weight_scale", sw.reshape(1, -1).contiguous())
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        sx = (x2.abs().amax(dim=1, keepdim=True).float() / 448.0).clamp_min(1e-12)
        xq = (x2.float() / sx).clamp(-448, 448).to(torch.float8_e4m3fn)
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=sx, scale_b=self.weight_scale, bias=bias,
                             out_dtype=torch.bfloat16, use_fast_accum=True)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def _torchao_fp8(block: nn.Module) -> bool:
    """Quantize ``block`` with torchao's fp8 row-wise dynamic config; False when torchao is unusable."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow
        from torchao.quantization import quantize_ as ao_quantize_
    except Exception:  # noqa: BLE001  (ImportError, or a torchao built for another torch)
        return False
    ao_quantize_(block, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return True


def peer_label(use_torchao: bool) -> str:
    return ("torchao Float8DynamicActivationFloat8WeightConfig(PerRow)" if use_torchao
            else "fp8 row-wise baseline of benchmarks/flux.py (torch._scaled_mm; torchao not importable)")


def torchao_usable(device) -> bool:
    if torch.device(device).type != "cuda":
        return False
    try:
        import torchao  # noqa: F401
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def convert_block(block: nn.Module, variant: str, use_torchao: bool) -> int:
    """Turn a freshly built block into ``variant`` in place; returns the number of converted linears."""
    if variant == "bf16":
        return 0
    if variant in ACTIVATIONS:
        from torch_ternary import TernaryConfig, quantize_

        return len(quantize_(block, TernaryConfig(preset="all", activations=ACTIVATIONS[variant])).layers_converted)
    if variant == "peer_fp8":
        n = sum(isinstance(m, nn.Linear) for m in block.modules())
        if use_torchao and _torchao_fp8(block):
            return n
        for name, mod in list(block.named_modules()):
            for child_name, child in list(mod.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(mod, child_name, Fp8RowwiseLinear(child))
        return n
    raise ValueError(f"unknown variant {variant!r}")


def build_variant(variant: str, config: dict, device, dtype: torch.dtype, seed: int = 0, stream_mlp: int = 0,
                  use_torchao: bool = False) -> tuple[nn.Module, dict]:
    """The FLUX transformer of ``config`` as ``variant``, built block by block on ``device``.

    Every block gets the same random weights for every variant (seeded by its index) before it is
    converted, so variants differ only by their arithmetic.
    """
    from torch_ternary.testing.flux import build_flux

    t0 = time.perf_counter()
    model = build_flux(config, device="meta", dtype=dtype)
    converted = 0
    for name, child in model.named_children():
        if name in BLOCK_LISTS:
            for i, block in enumerate(child):
                materialize_(block, device, dtype, seed=seed * 100003 + BLOCK_LISTS.index(name) * 1000 + i)
                converted += convert_block(block, variant, use_torchao)
        else:
            materialize_(child, device, dtype, seed=seed * 100003 + 999)
    if variant in ACTIVATIONS:
        from torch_ternary import TernaryConfig

        model._torch_ternary_config = TernaryConfig(activations=ACTIVATIONS[variant])
    if stream_mlp:
        stream_mlp_(model, stream_mlp)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return model.eval(), {"converted_linears": converted, "build_s": time.perf_counter() - t0}


# ============================================================================ memory levers
class ChunkedFeedForward(nn.Module):
    """A FeedForward applied ``chunk`` tokens at a time (token-wise, so the result is the same)."""

    def __init__(self, ff: nn.Module, chunk: int):
        super().__init__()
        self.ff, self.chunk = ff, int(chunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] <= self.chunk:
            return self.ff(x)
        return torch.cat([self.ff(x[:, s:s + self.chunk]) for s in range(0, x.shape[1], self.chunk)], dim=1)


def _streamed_single_forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                             joint_attention_kwargs=None):
    """diffusers ``FluxSingleTransformerBlock.forward`` with the MLP branch and ``proj_out`` run
    ``self._stream_chunk`` tokens at a time: the ``[T, 4 * 3072]`` MLP activation and the
    ``[T, 5 * 3072]`` concatenation never exist for all tokens at once."""
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    attn_output = self.attn(hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb,
                            **(joint_attention_kwargs or {}))
    gate = gate.unsqueeze(1)
    chunk, tokens = self._stream_chunk, residual.shape[1]
    parts = []
    for s in range(0, tokens, chunk):
        mlp = self.act_mlp(self.proj_mlp(norm_hidden_states[:, s:s + chunk]))
        h = torch.cat([attn_output[:, s:s + chunk], mlp], dim=2)
        parts.append(residual[:, s:s + chunk] + gate * self.proj_out(h))
    hidden_states = torch.cat(parts, dim=1)
    if hidden_states.dtype == torch.float16:
        hidden_states = hidden_states.clip(-65504, 65504)
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def stream_mlp_(model: nn.Module, chunk: int) -> nn.Module:
    """Run every block's MLP ``chunk`` tokens at a time (double blocks: ``ff`` / ``ff_context``;
    single blocks: ``proj_mlp`` + GELU + ``proj_out``), in place. Token-wise math: same results up
    to GEMM summation order."""
    for block in model.transformer_blocks:
        for attr in ("ff", "ff_context"):
            ff = getattr(block, attr)
            if not isinstance(ff, ChunkedFeedForward):
                setattr(block, attr, ChunkedFeedForward(ff, chunk))
    for block in model.single_transformer_blocks:
        cls = type(block)
        if not getattr(cls, "_torch_ternary_streamed", False):
            streamed = type("Streamed" + cls.__name__, (cls,),
                            {"forward": _streamed_single_forward, "_torch_ternary_streamed": True})
            block.__class__ = streamed
        block._stream_chunk = int(chunk)
    return model


# ================================================================================= measure
def compile_blocks_(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> int:
    """Regional compilation: ``block.compile(fullgraph=True)`` for every transformer block (what
    diffusers' ``compile_repeated_blocks`` does; blocks of one class share the compiled code)."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    n = 0
    for name in BLOCK_LISTS:
        for block in getattr(model, name):
            kwargs = {"fullgraph": True, "backend": backend}
            if mode:
                kwargs["mode"] = mode
            block.compile(**kwargs)
            n += 1
    return n


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_steps(model: nn.Module, inputs: dict, device, warmup: int, steps: int) -> dict:
    """Per-step latency (ms) after ``warmup`` steps: CUDA events on a GPU, ``perf_counter`` on CPU."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        model(**inputs)
    _sync(device)
    times = []
    for _ in range(steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(**inputs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            model(**inputs)
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times}


def peak_memory(model: nn.Module, inputs: dict, device) -> dict:
    """Peak allocated bytes of one forward (weights included), and what was resident before it."""
    if torch.device(device).type != "cuda":
        return {"peak_bytes": None, "resident_bytes": None, "activation_peak_bytes": None}
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = model(**inputs)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return {"peak_bytes": peak, "resident_bytes": resident, "activation_peak_bytes": peak - resident}


def grad_context(kind: str):
    return torch.inference_mode() if kind == "inference" else torch.no_grad()


def run_variant(variant: str, args, config: dict, inputs: dict, use_torchao: bool) -> list[dict]:
    """Build one variant, measure it eagerly and compiled; one result row per mode."""
    from torch_ternary.quantization.report import model_nbytes

    rows = []
    label = peer_label(use_torchao) if variant == "peer_fp8" else variant
    try:
        model, info = build_variant(variant, config, args.device, args.dtype, args.seed, args.stream_mlp, use_torchao)
    except Exception as exc:  # noqa: BLE001  (report and go on with the other variants)
        return [{"variant": variant, "label": label, "mode": m, "error": f"build: {type(exc).__name__}: {exc}"[:500]}
                for m in args.modes]
    weight_bytes = model_nbytes(model)
    print(f"[{variant}] built in {info['build_s']:.1f} s: {info['converted_linears']} linears converted, "
          f"{weight_bytes / 1e9:.2f} GB of weights", flush=True)
    for mode in args.modes:
        row = {"variant": variant, "label": label, "mode": mode, "weight_bytes": weight_bytes, **info}
        try:
            with grad_context(args.grad_mode):
                if mode == "compiled":
                    torch._dynamo.reset()
                    row["compiled_blocks"] = compile_blocks_(model, args.compile_backend, args.compile_mode)
                    t0 = time.perf_counter()
                    model(**inputs)
                    _sync(args.device)
                    row["compile_s"] = time.perf_counter() - t0
                row.update(time_steps(model, inputs, args.device, args.warmup, args.steps))
                row.update(peak_memory(model, inputs, args.device))
                out = model(**inputs)[0]
                row["output_finite"] = bool(torch.isfinite(out).all())
                del out
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        rows.append(row)
        peak = row.get("peak_bytes")
        print(f"[{variant}/{mode}] " + (f"error {row['error']}" if "error" in row else
              f"median {row['median_ms']:.2f} ms/step, peak {'-' if peak is None else f'{peak / 1e9:.2f} GB'}"),
              flush=True)
    del model
    torch._dynamo.reset()
    if torch.device(args.device).type == "cuda":
        torch.cuda.empty_cache()
    return rows


# ================================================================================ reporting
def add_ratios(rows: list[dict]) -> list[dict]:
    """Speed-up and memory ratios against bf16 (same mode) and against the fp8 peer (same mode)."""
    ok = {(r["variant"], r["mode"]): r for r in rows if "error" not in r and "median_ms" in r}
    for r in rows:
        base, peer = ok.get(("bf16", r["mode"])), ok.get(("peer_fp8", r["mode"]))
        if "median_ms" not in r:
            continue
        if base:
            r["speedup_vs_bf16"] = base["median_ms"] / r["median_ms"]
            if base.get("peak_bytes") and r.get("peak_bytes"):
                r["peak_memory_ratio_vs_bf16"] = base["peak_bytes"] / r["peak_bytes"]
            r["weight_ratio_vs_bf16"] = base["weight_bytes"] / r["weight_bytes"]
        if peer:
            r["speedup_vs_peer_fp8"] = peer["median_ms"] / r["median_ms"]
    return rows


def markdown_table(payload: dict) -> str:
    """The table of docs/benchmarks.md, from a results payload."""
    def fmt(v, spec, unit=""):
        return "-" if v is None else format(v, spec) + unit

    lines = ["| variant | mode | ms / step | vs bf16 | vs fp8 peer | peak GB | peak vs bf16 | weights GB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in payload["results"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['mode']} | error: {r['error'][:60]} | | | | | |")
            continue
        peak = r.get("peak_bytes")
        lines.append(
            f"| {r['variant']} | {r['mode']} | {fmt(r.get('median_ms'), '.1f')} "
            f"| {fmt(r.get('speedup_vs_bf16'), '.2f', '×')} "
            f"| {fmt(r.get('speedup_vs_peer_fp8'), '.2f', '×')} | {fmt(None if peak is None else peak / 1e9, '.2f')} "
            f"| {fmt(r.get('peak_memory_ratio_vs_bf16'), '.2f', '×')} | {r['weight_bytes'] / 1e9:.2f} |")
    return "\n".join(lines)


def plot(payload: dict, path: Path) -> Path | None:
    """Latency and peak memory per variant (eager / compiled); None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    rows = [r for r in payload["results"] if "error" not in r and "median_ms" in r]
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.38
    for j, mode in enumerate(MODES):
        by = {r["variant"]: r for r in rows if r["mode"] == mode}
        xs = [i + (j - 0.5) * width for i in range(len(variants))]
        axes[0].bar(xs, [by[v]["median_ms"] if v in by else 0 for v in variants], width, label=mode)
        axes[1].bar(xs, [(by[v].get("peak_bytes") or 0) / 1e9 if v in by else 0 for v in variants], width, label=mode)
    for ax, title in zip(axes, ("ms per transformer step (median)", "peak memory of a forward (GB)")):
        ax.set_xticks(range(len(variants)), variants, rotation=20)
        ax.set_title(title)
        ax.legend()
    env = payload.get("environment", {})
    return save_figure(fig, path, f"FLUX.1-dev transformer, {payload.get('tokens', '?')} tokens, on "
                                  f"{env.get('device')} (torch {env.get('torch')}, {env.get('date')})")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def _save(payload: dict, name: str, out_dir: Path, make_plot: bool) -> Path:
    if out_dir.resolve() == RESULTS.resolve():
        out = write_results(name, payload)
    else:  # e.g. $OUT on the GPU machine, or a test's tmp folder: leave benchmarks/results/ alone
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"{name}.json"
        out.write_text(json.dumps({"environment": environment(), **payload}, indent=2) + "\n")
    print(f"wrote {out}")
    print(markdown_table(payload))
    if make_plot:
        plot(json.loads(out.read_text()), out.with_suffix(".png"))
    return out


# ====================================================================== accuracy (CPU)
def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    """``10 log10(|ref|² / |out - ref|²)`` in float64."""
    ref, out = ref.double(), out.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum().clamp_min(1e-300)))


def measure_sqnr(config_name: str = "small", seeds=(0, 1, 2), grid: int = 16, text_tokens: int = 32) -> dict:
    """SQNR (dB) of the transformer output against the dense float32 model, per variant.

    Random-weight FLUX of ``config_name`` (diffusers' default init, float32, CPU, reference
    kernels); each seed is a new model and new inputs (``grid x grid`` image + ``text_tokens`` text
    tokens, so the attention / MLP linears have > 16 rows and take the A8 path; the AdaLN linears
    run at M = 1 and keep 16-bit activations). The ternary codes are computed once per seed and
    the activation mode switched with ``set_activations``.
    """
    from diffusers.utils import logging as diffusers_logging

    from torch_ternary import TernaryConfig, quantize_
    from torch_ternary.ops import ternary_linear_a8 as ops_a8
    from torch_ternary.quantization.activations import set_activations
    from torch_ternary.testing.flux import FLUX_SMALL_CONFIG, FLUX_TINY_CONFIG, build_flux, example_inputs

    diffusers_logging.set_verbosity_error()  # .to(bfloat16) of a fresh model warns about fp32 modules it lacks
    config = {"small": FLUX_SMALL_CONFIG, "tiny": FLUX_TINY_CONFIG}[config_name]
    per_seed = []
    for seed in seeds:
        dense = build_flux(config, seed=seed)
        inputs = example_inputs(config, height=grid, width=grid, text_tokens=text_tokens, seed=seed)
        with torch.inference_mode():
            ref = dense(**inputs)[0]
            row = {"seed": seed, "bf16_dense": sqnr_db(ref, dense.to(torch.bfloat16)(**_cast(inputs))[0])}
            del dense
            peer = build_flux(config, seed=seed, dtype=torch.bfloat16)  # bf16 first: .to() would cast fp8 buffers
            for name in BLOCK_LISTS:
                for block in getattr(peer, name):
                    convert_block(block, "peer_fp8", use_torchao=False)
            row["fp8_rowwise_dense_weights"] = sqnr_db(ref, peer(**_cast(inputs))[0])
            del peer
            model = build_flux(config, seed=seed)
            quantize_(model, TernaryConfig())
            for mode in ops_a8.ACTIVATION_MODES:
                set_activations(model, mode)
                row[f"ternary_{mode}"] = sqnr_db(ref, model(**inputs)[0])
            y16 = (set_activations(model, "16bit"), model(**inputs)[0])[1]
            for mode in ("int8", "fp8"):
                set_activations(model, mode)
                row[f"ternary_{mode}_vs_ternary_16bit"] = sqnr_db(y16, model(**inputs)[0])
        per_seed.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in per_seed[0] if k != "seed"]
    return {
        "benchmark": "a8_sqnr",
        "single_linear": single_linear_sqnr(),
        "config": config_name,
        "tokens": {"image": grid * grid, "text": text_tokens},
        "reference": "dense float32 model, same random weights and inputs",
        "notes": ("bf16_dense: the dense model in bf16; fp8_rowwise_dense_weights: the fp8 peer's arithmetic "
                  "(Fp8RowwiseLinear, bf16 activations); ternary_*: per-channel absmean ternary weights with "
                  "16-bit / int8 / fp8 activations (float32 model, reference kernels); *_vs_ternary_16bit: "
                  "what the activation quantization alone costs"),
        "per_seed": per_seed,
        "mean_db": {k: statistics.fmean(r[k] for r in per_seed) for k in keys},
    }


def single_linear_sqnr(k: int = 3072, n: int = 3072, m: int = 512, seed: int = 0) -> dict:
    """SQNR (dB) of one ternary linear with 8-bit activations against the same linear with 16-bit
    activations (float32), for Gaussian activations and for Gaussian activations whose 1 % of
    channels are 20x larger (outlier channels, which per-token absmax scaling handles worst)."""
    from torch_ternary import TernaryTensor

    g = torch.Generator().manual_seed(seed)
    t = TernaryTensor.from_float(torch.randn(n, k, generator=g) * 0.02)
    out = {"shape": {"M": m, "K": k, "N": n}}
    for name, x in (("gaussian", torch.randn(m, k, generator=g)),
                    ("outlier_channels", torch.randn(m, k, generator=g) * torch.where(torch.rand(k, generator=g) < 0.01,
                                                                                     20.0, 1.0))):
        y16 = torch.ops.torch_ternary.linear(x, t.packed, t.scale, None, k, k)
        out[name] = {fmt: sqnr_db(y16, torch.ops.torch_ternary.linear_a8(x, t.packed, t.scale, None, k, k, fmt))
                     for fmt in ("int8", "fp8")}
    return out


def _cast(inputs: dict) -> dict:
    return {k: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in inputs.items()}


def mini_flux_a8_quality(modes=("16bit", "int8", "fp8"), seeds=(0, 1), device: str = "cpu") -> dict:
    """HOOK for the A8 quality score on the trained Mini FLUX (``torch_ternary.mini``): the shipped
    ternary pipeline, scored with ``mini.score`` over the evaluation prompts for each activation
    mode (same codes, ``set_activations``). Raises RuntimeError (with the reason) until the
    Mini FLUX weights and ``load_pipeline`` exist."""
    from torch_ternary.quantization.activations import set_activations

    try:
        from torch_ternary.mini import evaluation_prompts, load_pipeline, score

        pipe = load_pipeline(device, quantized=True)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"Mini FLUX not available yet ({type(exc).__name__}: {exc}); "
                           "run `python benchmarks/flux.py --mini` once it is shipped") from exc
    out = {}
    for mode in modes:
        set_activations(pipe.transformer, mode)
        out[mode] = score(pipe, evaluation_prompts(), list(seeds))
    set_activations(pipe.transformer, "16bit")
    return {"benchmark": "a8_mini_quality", "seeds": list(seeds), "scores": out}


# ===================================================================================== plan
def forwards_per_mode(mode: str, warmup: int, steps: int) -> int:
    """Transformer forwards ``run_variant`` makes in one mode: (compiled: the compiling call), warm-up,
    timed steps, the peak-memory forward and the output check."""
    return (1 if mode == "compiled" else 0) + warmup + steps + 2


def plan(args) -> dict:
    """What ``main(args)`` will do, counted without a GPU or diffusers: builds, forwards, compilations, files."""
    from torch_ternary.testing.flux import FLUX_DEV_CONFIG, FLUX_SMALL_CONFIG

    config = FLUX_DEV_CONFIG if args.config == "dev" else FLUX_SMALL_CONFIG
    blocks = config["num_layers"] + config["num_single_layers"]
    gh, gw = args.height // PIXELS_PER_TOKEN, args.width // PIXELS_PER_TOKEN
    per_variant = {m: forwards_per_mode(m, args.warmup, args.steps) for m in args.modes}
    name = "flux_<gpu>" + ("_small" if args.config == "small" else "") + args.tag
    return {
        "benchmark": "flux",
        "config": args.config,
        "variants": list(args.variants),
        "modes": list(args.modes),
        "tokens": {"image": gh * gw, "text": args.text_tokens, "batch": args.batch},
        "builds": len(args.variants),
        "transformer_blocks": blocks,
        "forwards": len(args.variants) * sum(per_variant.values()),
        "forwards_per_variant_mode": per_variant,
        "timed_steps": len(args.variants) * len(args.modes) * args.steps,
        # regional compilation: every block compiled (fullgraph); the two block classes share their code
        "compiled_blocks": len(args.variants) * blocks * ("compiled" in args.modes),
        "torch_compile_compilations": len(args.variants) * len(BLOCK_LISTS) * ("compiled" in args.modes),
        "outputs": [name + ".json"] + ([] if args.no_plot else [name + ".png"]),
    }


# ===================================================================================== main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("dev", "small"), default="dev",
                   help="dev: FLUX.1-dev on the GPU; small: FLUX_SMALL_CONFIG smoke run (CPU by default)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--height", type=int, help="image height in pixels (default 1024; small: 256)")
    p.add_argument("--width", type=int, help="image width in pixels (default 1024; small: 256)")
    p.add_argument("--text-tokens", type=int, help="default 512 (small: 32)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="default: cuda for dev, cpu for small")
    p.add_argument("--stream-mlp", type=int, default=0, metavar="TOKENS",
                   help="run every block's MLP TOKENS tokens at a time (0: off)")
    p.add_argument("--grad-mode", choices=("inference", "no_grad"), default="inference")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--peer", choices=("auto", "torchao", "scaled_mm"), default="auto",
                   help="fp8 peer: torchao if importable (auto), or this file's _scaled_mm baseline")
    p.add_argument("--tag", default="", help="suffix of the results file name")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--plot", metavar="JSON", help="only plot (and print the ratio table of) a results file")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="combine results files of several runs into one")
    p.add_argument("--sqnr", action="store_true", help="CPU accuracy run: writes a8_sqnr_cpu.json")
    p.add_argument("--mini", action="store_true", help="A8 quality on the trained Mini FLUX (when shipped)")
    p.add_argument("--plan", action="store_true", help="print what the run would do (JSON) and exit; no GPU needed")
    args = p.parse_args(argv)
    small = args.config == "small"
    args.height = args.height or (256 if small else 1024)
    args.width = args.width or (256 if small else 1024)
    args.text_tokens = args.text_tokens if args.text_tokens is not None else (32 if small else 512)
    args.device = args.device or ("cpu" if small else "cuda")
    args.dtype = torch.bfloat16
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plan:
        print(json.dumps(plan(args)))
        return 0
    if args.plot:
        path = Path(args.plot)
        payload = json.loads(path.read_text())
        print(markdown_table(payload))
        plot(payload, path.with_suffix(".png"))
        return 0
    if args.merge:
        payloads = [json.loads(Path(f).read_text()) for f in args.merge]
        rows = {}
        for pl in payloads:
            for r in pl["results"]:
                rows[(r["variant"], r["mode"])] = r
        merged = {k: v for k, v in payloads[-1].items() if k not in ("environment", "results")}
        merged["results"] = add_ratios([rows[k] for k in sorted(rows, key=lambda k: (VARIANTS.index(k[0]), k[1]))])
        merged["merged_from"] = [str(f) for f in args.merge]
        _save(merged, f"flux_{_slug(merged.get('gpu', 'merged'))}{args.tag}", args.out_dir, not args.no_plot)
        return 0
    if args.sqnr:
        out = write_results("a8_sqnr_cpu", measure_sqnr())
        print(f"wrote {out}")
        return 0
    if args.mini:
        out = write_results("a8_mini_quality", mini_flux_a8_quality())
        print(f"wrote {out}")
        return 0
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/flux.py needs a CUDA GPU for the FLUX.1-dev run (none found). Use --config small for "
              "a CPU smoke run, --sqnr for the CPU accuracy run; see benchmarks/run_gpu.sh", file=sys.stderr)
        return 2
    from torch_ternary.testing.flux import FLUX_DEV_CONFIG, FLUX_SMALL_CONFIG, example_inputs

    config = FLUX_DEV_CONFIG if args.config == "dev" else FLUX_SMALL_CONFIG
    gh, gw = args.height // PIXELS_PER_TOKEN, args.width // PIXELS_PER_TOKEN
    inputs = example_inputs(config, height=gh, width=gw, text_tokens=args.text_tokens, batch=args.batch,
                            dtype=args.dtype, device=args.device, seed=args.seed)
    use_torchao = args.peer == "torchao" or (args.peer == "auto" and torchao_usable(args.device))
    if args.peer == "torchao" and not torchao_usable(args.device):
        print("--peer torchao: torchao is not importable here", file=sys.stderr)
        return 2
    if "peer_fp8" in args.variants:
        print(f"fp8 peer: {peer_label(use_torchao)}", flush=True)
    rows = []
    for variant in args.variants:
        rows += run_variant(variant, args, config, inputs, use_torchao)
    gpu = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    payload = {
        "benchmark": "flux",
        "config": args.config,
        "gpu": gpu,
        "tokens": {"image": gh * gw, "text": args.text_tokens, "batch": args.batch},
        "settings": {"steps": args.steps, "warmup": args.warmup, "dtype": "bfloat16", "grad_mode": args.grad_mode,
                     "stream_mlp": args.stream_mlp, "compile": f"regional (every block, fullgraph=True), backend "
                     f"{args.compile_backend}, mode {args.compile_mode}", "peer_fp8": peer_label(use_torchao),
                     "granularity": "per_channel", "weights": "random (seeded), identical across variants"},
        "results": add_ratios(rows),
    }
    name = f"flux_{_slug(gpu)}" + ("_small" if args.config == "small" else "") + args.tag
    _save(payload, name, args.out_dir, not args.no_plot)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
