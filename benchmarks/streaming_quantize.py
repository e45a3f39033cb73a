"""Streaming quantization of the full FLUX.1-dev transformer on a machine that cannot hold it in bf16.

1. *Write* a random-weight FLUX.1-dev transformer (11.9 B parameters, 23.8 GB bf16) in diffusers'
   sharded layout: ``config.json``, ``diffusion_pytorch_model-0000i-of-00003.safetensors`` (10 GB
   shards, as ``save_pretrained`` and the real checkpoint have them) and the index. Tensors are
   generated and written one at a time (std 0.02 normal weights, unit norm weights, zero biases).
2. *Quantize* it in a child process through the diffusers quantizer::

       FluxTransformer2DModel.from_pretrained(src, quantization_config=TernaryConfig(), torch_dtype=torch.bfloat16)

   and save the result twice with ``save_quantized_folder`` (2-bit and base-3 codecs). The child
   reports its wall time and its peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), so the
   writer's memory is not counted.
3. *Reload* the base-3 folder in a second child with no config (``from_pretrained(dst)``), checking
   every CRC32, and check that its codes equal the 2-bit folder's, layer by layer.

Big files go to ``--workdir`` (default: a temp folder under /tmp) and are deleted at the end unless
``--keep``. ``--config small`` runs the same pipeline on a small FLUX-architecture config in seconds and
also checks the quantized outputs against ``quantize_`` on the same weights.

    python benchmarks/streaming_quantize.py --config small
    nice -n 10 python benchmarks/streaming_quantize.py           # full size: ~30 GB of disk, some minutes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import write_results

CONFIGS = {"dev": "FLUX_DEV_CONFIG", "small": "FLUX_SMALL_CONFIG"}
#: FLUX.1-dev's own checkpoint uses diffusers' default 10 GB shards (3 files).
SHARD_SIZE = {"dev": "10GB", "small": "2MB"}


def flux_config(name: str) -> dict:
    from torch_ternary.testing import flux

    return dict(getattr(flux, CONFIGS[name]))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ---------------------------------------------------------------------- 1. writer
def write_random_flux(config_name: str, out: Path, seed: int = 0) -> dict:
    """A diffusers-layout dense bf16 folder of a random-weight FLUX transformer, written tensor by tensor."""
    from torch_ternary.format.folder import INDEX_SUFFIX, WEIGHTS_NAME, _model_config_dict, parse_size
    from torch_ternary.format.streaming import Planned, shard_names, split_shards, write_safetensors_streaming
    from torch_ternary.testing.flux import build_flux

    meta = build_flux(flux_config(config_name), device="meta", dtype=torch.bfloat16)
    state = meta.state_dict()
    gen = torch.Generator().manual_seed(seed)

    def make(key, shape):
        if key.endswith("bias"):
            return torch.zeros(shape, dtype=torch.bfloat16)
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16)
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    entries = [Planned(k, torch.bfloat16, v.shape, lambda k=k, s=tuple(v.shape): make(k, s)) for k, v in state.items()]
    groups = split_shards(entries, parse_size(SHARD_SIZE[config_name]))
    names = shard_names(WEIGHTS_NAME, len(groups))

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_safetensors_streaming([(out / n, g) for n, g in zip(names, groups)], lambda crcs: {"format": "pt"})
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(e.nbytes for e in entries)},
                 "weight_map": {e.key: n for n, g in zip(names, groups) for e in g}}
        (out / (WEIGHTS_NAME + INDEX_SUFFIX)).write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(_model_config_dict(meta), indent=2))
    return {"seconds": time.perf_counter() - t0, "shards": len(groups), "bytes": folder_bytes(out),
            "params": sum(v.numel() for v in state.values()), "writer_peak_rss_bytes": peak_rss_bytes()}


# ---------------------------------------------------------------------- 2. quantizing child
def child_quantize(src: Path, dst2: Path, dst3: Path, check: str | None) -> dict:
    from diffusers import FluxTransformer2DModel

    import torch_ternary  # noqa: F401  (registers the quantizer)
    from torch_ternary import TernaryConfig, TernaryTensor
    from torch_ternary.format.folder import save_quantized_folder
    from torch_ternary.quantization.report import model_nbytes

    t0 = time.perf_counter()
    model = FluxTransformer2DModel.from_pretrained(src, quantization_config=TernaryConfig(), torch_dtype=torch.bfloat16)
    t_load = time.perf_counter() - t0
    rss_after_load = peak_rss_bytes()
    t0 = time.perf_counter()
    save_quantized_folder(model, dst2, codec="2bit")
    t_2bit = time.perf_counter() - t0
    t0 = time.perf_counter()
    save_quantized_folder(model, dst3, codec="base3")
    t_base3 = time.perf_counter() - t0
    out = {
        "quantize_on_load_seconds": t_load, "save_2bit_seconds": t_2bit, "save_base3_seconds": t_base3,
        "peak_rss_after_load_bytes": rss_after_load, "peak_rss_bytes": peak_rss_bytes(),
        "memory_bytes": model_nbytes(model),
        "ternary_layers": sum(isinstance(p, TernaryTensor) for p in model.parameters()),
    }
    if check == "small":  # the same weights through quantize_ give the same model, bit for bit
        from torch_ternary import quantize_
        from torch_ternary.testing.flux import example_inputs

        ref = FluxTransformer2DModel.from_pretrained(src, torch_dtype=torch.bfloat16)
        quantize_(ref, TernaryConfig())
        same = all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))
        x = example_inputs(flux_config("small"), dtype=torch.bfloat16)
        with torch.no_grad():
            same_out = torch.equal(ref(**x)[0], model(**x)[0])
        out["matches_quantize_"] = bool(same and same_out)
    return out


# ---------------------------------------------------------------------- 3. reload child
def child_reload(dst3: Path, dst2: Path) -> dict:
    import zlib

    from diffusers import FluxTransformer2DModel

    import torch_ternary  # noqa: F401
    from torch_ternary import TernaryTensor
    from torch_ternary.format.folder import read_folder_header
    from torch_ternary.format.header import CODES_SUFFIX

    t0 = time.perf_counter()
    model = FluxTransformer2DModel.from_pretrained(dst3)  # no config, no dtype: both come from the folder
    seconds = time.perf_counter() - t0
    crc2 = read_folder_header(dst2)["crc32"]
    mismatched = 0
    layers = 0
    for name, p in model.state_dict().items():
        if isinstance(p, TernaryTensor):
            layers += 1
            mismatched += zlib.crc32(p.packed.contiguous().numpy().data) != crc2[name + CODES_SUFFIX]
    return {"reload_seconds": seconds, "reload_peak_rss_bytes": peak_rss_bytes(), "reload_dtype": str(model.dtype),
            "reload_ternary_layers": layers, "reload_codes_mismatching_2bit": int(mismatched)}


def run_child(*args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DIFFUSERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="dev")
    parser.add_argument("--workdir", default=None, help="where the big files go (default: a new folder in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the written folders")
    parser.add_argument("--child", choices=("quantize", "reload"), help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "quantize":
        print(json.dumps(child_quantize(Path(args.paths[0]), Path(args.paths[1]), Path(args.paths[2]),
                                        args.config if args.config == "small" else None)))
        return
    if args.child == "reload":
        print(json.dumps(child_reload(Path(args.paths[0]), Path(args.paths[1]))))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ternary-stream-", dir="/tmp"))
    src, dst2, dst3 = work / "flux-bf16", work / "flux-ternary-2bit", work / "flux-ternary-base3"
    try:
        print(f"writing a random FLUX ({args.config}) in diffusers' sharded bf16 layout to {src} ...", flush=True)
        written = write_random_flux(args.config, src)
        print(f"  {written['bytes'] / 1e9:.2f} GB in {written['shards']} shards, {written['seconds']:.0f} s", flush=True)
        print("quantizing in a child process (from_pretrained with TernaryConfig) ...", flush=True)
        t0 = time.perf_counter()
        quant = run_child("--child", "quantize", "--config", args.config, str(src), str(dst2), str(dst3))
        quant["child_wall_seconds"] = time.perf_counter() - t0
        print(f"  {quant}", flush=True)
        print("reloading the base-3 folder in a child process (no config) ...", flush=True)
        reload = run_child("--child", "reload", str(dst3), str(dst2))
        print(f"  {reload}", flush=True)
        bf16 = written["bytes"]
        b2, b3 = folder_bytes(dst2), folder_bytes(dst3)
        result = {
            "config": args.config, "params": written["params"], "shards_bf16": written["shards"],
            "bf16_bytes": bf16, "write_seconds": written["seconds"], "writer_peak_rss_bytes": written["writer_peak_rss_bytes"],
            **quant,
            "file_bytes_2bit": b2, "file_bytes_base3": b3,
            "ratio_2bit": bf16 / b2, "ratio_base3": bf16 / b3,
            "shards_2bit": len(list(dst2.glob("*.safetensors"))), "shards_base3": len(list(dst3.glob("*.safetensors"))),
            **reload,
            "peak_rss_limit_bytes": 6 * 10**9,
        }
        result["peak_rss_within_limit"] = result["peak_rss_bytes"] <= result["peak_rss_limit_bytes"]
        name = "streaming_quantize" if args.config == "dev" else f"streaming_quantize_{args.config}"
        path = write_results(name, result)
        gb = 1e9
        print(f"\nbf16 {bf16 / gb:.2f} GB -> 2-bit {b2 / gb:.3f} GB ({bf16 / b2:.2f}x), base-3 {b3 / gb:.3f} GB "
              f"({bf16 / b3:.2f}x); quantize-on-load {quant['quantize_on_load_seconds']:.0f} s, peak RSS "
              f"{quant['peak_rss_bytes'] / gb:.2f} GB; results in {path}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
