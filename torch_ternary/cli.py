"""``torch-ternary``: quantize, inspect and run ternary models from the command line.

::

    torch-ternary quantize SRC DST [--format base3|2bit] [--granularity per_channel] [--dtype bfloat16] ...
    torch-ternary info PATH [--layers] [--json]
    torch-ternary generate PIPELINE_DIR --prompt "a red cube" [-o image.png] [--steps 4] [--seed 0] ...
    torch-ternary demo [--out demo_mini_flux.png] [--flux [--no-compile]]
    torch-ternary calibrate --pipeline mini --method distill_qat --prompts mini --out mini_ternary.safetensors

SRC may be a diffusers model folder (``config.json`` + safetensors, sharded or not: quantized while it
loads, written as a ternary folder that ``from_pretrained`` reloads), a diffusers pipeline folder
(``model_index.json``: its ``transformer`` is quantized, the other components copied), or a plain
``.safetensors`` state dict (quantized tensor by tensor into one ternary file). User errors (bad
paths, bad files, bad options) print one line and exit with status 2. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .errors import TernaryError
from .quantization.absmean import GRANULARITIES
from .quantization.config import PRESETS

EXIT_USAGE = 2
_DTYPES = ("bfloat16", "float16", "float32")


class UserError(Exception):
    """An error in what the user asked for: printed as one line, exit status 2."""


# ---------------------------------------------------------------------- helpers
def _torch_dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, name)


def _ternary_config(args):
    from .quantization.config import TernaryConfig

    return TernaryConfig(
        granularity=args.granularity, group_size=args.group_size, preset=args.preset,
        include=tuple(args.include) if args.include else None, exclude=tuple(args.exclude or ()),
        min_numel=args.min_numel, min_in_features=args.min_in_features,
    )


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _folder_kind(path: Path) -> str:
    if (path / "model_index.json").is_file():
        return "pipeline"
    if (path / "config.json").is_file():
        return "model"
    raise UserError(f"{path} is a folder but neither a diffusers model (config.json) nor a pipeline (model_index.json)")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file: {e}") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _model_class(config: dict, where: Path):
    name = config.get("_class_name")
    if not isinstance(name, str):
        raise UserError(f"{where}/config.json has no _class_name: not a diffusers model folder")
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise UserError(f"{where}: diffusers has no model class {name!r}")
    return cls


def _prepare_dst(dst: Path, force: bool, is_dir: bool) -> None:
    if dst.exists():
        if not force:
            raise UserError(f"{dst} already exists (pass --force to overwrite)")
        if dst.is_dir() and not is_dir:
            raise UserError(f"{dst} is a folder; give a .safetensors file name")
        if dst.is_file() and is_dir:
            raise UserError(f"{dst} is a file; give a folder name")


# ---------------------------------------------------------------------- quantize
def cmd_quantize(args) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if not src.exists():
        raise UserError(f"no such file or folder: {src}")
    config = _ternary_config(args)
    dtype = _torch_dtype(args.dtype)
    if src.is_file():
        if dst.suffix != ".safetensors":
            raise UserError(f"{dst}: a plain safetensors input gives a single file: name it *.safetensors")
        _prepare_dst(dst, args.force, is_dir=False)
        from .format.convert import quantize_file

        stats = quantize_file(src, dst, config, codec=args.format, dtype=dtype, progress=not args.quiet)
        print(f"{src} -> {dst}: {stats['ternary_layers']} ternary layers "
              f"({100 * stats['params_ternary'] / max(stats['params_total'], 1):.2f} % of {stats['params_total']:,} "
              f"parameters), {_fmt_bytes(stats['bytes_in'])} -> {_fmt_bytes(stats['bytes_out'])} "
              f"({stats['bytes_in'] / stats['bytes_out']:.2f}x, {args.format})")
        return 0
    kind = _folder_kind(src)
    _prepare_dst(dst, args.force, is_dir=True)
    if kind == "pipeline":
        index = _read_json(src / "model_index.json")
        if "transformer" not in index or not (src / "transformer").is_dir():
            raise UserError(f"{src}: the pipeline has no transformer folder to quantize")
        dst.mkdir(parents=True, exist_ok=True)
        for entry in src.iterdir():
            if entry.name == "transformer":
                continue
            target = dst / entry.name
            if entry.is_dir():
                shutil.copytree(entry, target, dirs_exist_ok=True)
            else:
                shutil.copy2(entry, target)
        _quantize_model_folder(src / "transformer", dst / "transformer", config, args, dtype)
        print(f"copied the other pipeline components to {dst}")
        return 0
    _quantize_model_folder(src, dst, config, args, dtype)
    return 0


def _quantize_model_folder(src: Path, dst: Path, config, args, dtype) -> None:
    from .integrations import register_diffusers

    if not register_diffusers():
        raise UserError("quantizing a diffusers folder needs diffusers: pip install 'torch-ternary[diffusers]'")
    from .format.folder import save_quantized_folder
    from .integrations.diffusers_quantizer import TernaryDiffusersQuantizer, TernaryQuantizationConfig
    from .quantization.report import model_nbytes

    cfg = _read_json(src / "config.json")
    if isinstance(cfg.get("quantization_config"), dict):
        raise UserError(f"{src} is already quantized ({cfg['quantization_config'].get('quant_method')})")
    cls = _model_class(cfg, src)
    qconfig = TernaryQuantizationConfig(config, codec=args.format)
    TernaryDiffusersQuantizer.show_progress = not args.quiet
    try:
        model = cls.from_pretrained(src, quantization_config=qconfig, torch_dtype=dtype)
    finally:
        TernaryDiffusersQuantizer.show_progress = False
    save_quantized_folder(model, dst, codec=args.format, max_shard_size=args.max_shard_size, progress=not args.quiet)
    weights = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    out = sum(p.stat().st_size for p in dst.glob("*.safetensors"))
    layers = sum(1 for _ in model.hf_quantizer._selected)
    print(f"{src} -> {dst}: {layers} ternary layers, weights {_fmt_bytes(weights)} -> {_fmt_bytes(out)} "
          f"({weights / max(out, 1):.2f}x, {args.format}); in memory {_fmt_bytes(model_nbytes(model))}")


# ---------------------------------------------------------------------- info
def _describe_header(header: dict, file_bytes: int) -> dict:
    layers = header["ternary"]
    params = sum(int(v["shape"][0]) * int(v["shape"][1]) for v in layers.values())
    return {
        "format_version": header["format_version"], "library_version": header.get("library_version"),
        "codec": header["codec"], "layout": header["layout"], "architecture": header["architecture"].get("class"),
        "config": header.get("config"), "ternary_layers": len(layers), "ternary_params": params,
        "aliases": len(header["aliases"]), "stored_tensors": len(header["crc32"]), "bytes": file_bytes,
    }


def _plain_file_info(path: Path) -> dict:
    from safetensors import safe_open

    dtypes: dict[str, int] = {}
    params = candidates = 0
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        for k in keys:
            sl = f.get_slice(k)
            shape, dt = sl.get_shape(), sl.get_dtype()
            n = 1
            for s in shape:
                n *= s
            params += n
            dtypes[dt] = dtypes.get(dt, 0) + n
            candidates += int(k.endswith(".weight") and len(shape) == 2 and dt in ("F32", "F16", "BF16"))
    return {"kind": "plain safetensors", "tensors": len(keys), "params": params, "dtypes": dtypes,
            "linear_weight_candidates": candidates, "bytes": path.stat().st_size}


def _info(path: Path, with_layers: bool) -> dict:
    from .format.folder import folder_files
    from .format.header import HEADER_KEY, parse_header

    if path.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise TernaryError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
        if HEADER_KEY not in metadata:
            return _plain_file_info(path)
        header = parse_header(metadata, path)
        out = {"kind": "torch-ternary file", **_describe_header(header, path.stat().st_size)}
    else:
        kind = _folder_kind(path)
        if kind == "pipeline":
            index = _read_json(path / "model_index.json")
            comps = {k: v for k, v in index.items() if not k.startswith("_")}
            out = {"kind": "diffusers pipeline", "class": index.get("_class_name"),
                   "components": {k: (v[1] if isinstance(v, list) and len(v) == 2 else v) for k, v in comps.items()}}
            if (path / "transformer").is_dir():
                out["transformer"] = _info(path / "transformer", with_layers)
            return out
        cfg = _read_json(path / "config.json")
        key_files, _ = folder_files(path)
        files = sorted(set(key_files.values()))
        size = sum(p.stat().st_size for p in files)
        qc = cfg.get("quantization_config")
        from .format.single_file import read_header

        try:
            header = read_header(files[0])
        except TernaryError:
            if isinstance(qc, dict) and qc.get("quant_method") == "torch_ternary":
                raise
            return {"kind": "diffusers model", "class": cfg.get("_class_name"), "shards": len(files), "bytes": size,
                    "tensors": len(key_files), "quantization_config": qc}
        out = {"kind": "torch-ternary diffusers model", "class": cfg.get("_class_name"), "shards": len(files),
               "quantization_config": qc, **_describe_header(header, size)}
    if with_layers:
        out["layers"] = {name: {"shape": v["shape"], "dtype": v["dtype"], "group_size": v["group_size"]}
                         for name, v in header["ternary"].items()}
    return out


def _print_info(info: dict, indent: str = "") -> None:
    for key, value in info.items():
        if key == "layers":
            print(f"{indent}layers:")
            for name, v in value.items():
                print(f"{indent}  {name}: {v['shape'][0]}x{v['shape'][1]} {v['dtype']} group_size={v['group_size']}")
        elif isinstance(value, dict) and key in ("transformer",):
            print(f"{indent}{key}:")
            _print_info(value, indent + "  ")
        elif key == "bytes":
            print(f"{indent}bytes: {value:,} ({_fmt_bytes(value)})")
        elif key == "ternary_params" and info.get("bytes"):
            print(f"{indent}ternary_params: {value:,}")
        else:
            print(f"{indent}{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    if "ternary_params" in info and info.get("ternary_params"):
        codes = 1.6 if info["codec"] == "base3" else 2.0
        print(f"{indent}bits per ternary weight: {codes} (codes) + scales")


def cmd_info(args) -> int:
    path = Path(args.path)
    if not path.exists():
        raise UserError(f"no such file or folder: {path}")
    info = _info(path, args.layers)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        _print_info(info)
    return 0


# ---------------------------------------------------------------------- generate
def cmd_generate(args) -> int:
    folder = Path(args.pipeline)
    if not folder.is_dir():
        raise UserError(f"no such pipeline folder: {folder}")
    if not (folder / "model_index.json").is_file():
        raise UserError(f"{folder} has no model_index.json: not a diffusers pipeline folder")
    for name, value in (("--steps", args.steps), ("--height", args.height), ("--width", args.width)):
        if value <= 0:
            raise UserError(f"{name} must be positive, got {value}")
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise UserError(f"{out}: the output is a PNG: name it *.png")
    import torch

    from .integrations import register_diffusers

    if not register_diffusers():
        raise UserError("generate needs diffusers: pip install 'torch-ternary[diffusers]'")
    from diffusers import DiffusionPipeline

    dtype = args.dtype or _recorded_dtype(folder)
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=_torch_dtype(dtype))
    pipe.set_progress_bar_config(disable=args.quiet)
    kwargs = dict(prompt=args.prompt, num_inference_steps=args.steps, height=args.height, width=args.width,
                  guidance_scale=args.guidance, generator=torch.Generator().manual_seed(args.seed))
    tok2 = getattr(pipe, "tokenizer_2", None)
    max_len = args.max_sequence_length or min(512, getattr(tok2, "model_max_length", 512) or 512)
    kwargs["max_sequence_length"] = max_len
    image = pipe(**kwargs).images[0]
    from .format.atomic import atomic_write

    atomic_write(out, lambda tmp: image.save(tmp, format="PNG"))
    print(f"wrote {out} ({image.width}x{image.height}, {args.steps} steps, seed {args.seed})")
    return 0


def _recorded_dtype(folder: Path) -> str | None:
    """The dtype a ternary transformer of the pipeline was quantized in (so every component loads in it)."""
    cfg_path = folder / "transformer" / "config.json"
    if not cfg_path.is_file():
        return None
    qc = _read_json(cfg_path).get("quantization_config")
    dtype = qc.get("torch_dtype") if isinstance(qc, dict) else None
    return dtype if dtype in _DTYPES else None


# ---------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from . import demo

    problem = demo.check_args(args)
    if problem:
        raise UserError(problem)
    demo.main(["--out", args.out] + ["--flux"] * args.flux + ["--no-compile"] * args.no_compile)
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torch-ternary", description="Ternary (1.58-bit) weights for PyTorch / diffusers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quantize", help="ternarize a diffusers folder, pipeline folder or safetensors file",
                       description="Ternarize SRC into DST. SRC: a diffusers model folder, a pipeline folder, or a "
                                   "plain .safetensors file.")
    q.add_argument("src", help="diffusers model folder, pipeline folder (model_index.json), or .safetensors file")
    q.add_argument("dst", help="output folder (for folders) or .safetensors file (for a file)")
    q.add_argument("--format", choices=("base3", "2bit"), default="base3",
                   help="code storage: base3 (1.6 bits/weight, default) or 2bit (the in-memory layout)")
    q.add_argument("--granularity", choices=GRANULARITIES, default="per_channel", help="scale granule (default per_channel)")
    q.add_argument("--group-size", type=int, default=128, help="G for per_group (multiple of 16; default 128)")
    q.add_argument("--preset", choices=PRESETS, default="auto", help="which linears: auto (FLUX preset for FLUX), flux, all")
    q.add_argument("--include", action="append", metavar="GLOB", help="only ternarize linears matching GLOB (repeatable)")
    q.add_argument("--exclude", action="append", metavar="GLOB", help="keep linears matching GLOB dense (repeatable)")
    q.add_argument("--min-numel", type=int, default=0, help="keep linears with fewer weights dense")
    q.add_argument("--min-in-features", type=int, default=1, help="keep linears with fewer inputs dense")
    q.add_argument("--dtype", choices=_DTYPES, default=None,
                   help="dtype of the dense rest and of the ternary weights' logical dtype (default: as stored; "
                        "diffusers folders load as float32 unless given)")
    q.add_argument("--max-shard-size", default="10GB", help="shard size limit of an output folder (default 10GB)")
    q.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_quantize)

    i = sub.add_parser("info", help="what is inside a ternary (or plain) file, folder or pipeline")
    i.add_argument("path", help=".safetensors file, diffusers model folder or pipeline folder")
    i.add_argument("--layers", action="store_true", help="list every ternary layer")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)

    g = sub.add_parser("generate", help="prompt -> PNG with a diffusers pipeline folder (ternary transformer or not)")
    g.add_argument("pipeline", help="pipeline folder (model_index.json), e.g. from `torch-ternary quantize`")
    g.add_argument("--prompt", "-p", required=True, help="the text prompt")
    g.add_argument("--output", "-o", default="image.png", help="output PNG (default image.png)")
    g.add_argument("--steps", type=int, default=28, help="denoising steps (default 28)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--height", type=int, default=1024, help="image height in pixels (default 1024)")
    g.add_argument("--width", type=int, default=1024, help="image width in pixels (default 1024)")
    g.add_argument("--guidance", type=float, default=3.5, help="guidance scale (default 3.5)")
    g.add_argument("--max-sequence-length", type=int, default=None, help="T5 tokens (default min(512, tokenizer max))")
    g.add_argument("--dtype", choices=_DTYPES, default=None,
                   help="load the pipeline in this dtype (default: the ternary transformer's, else float32)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="the README demo: Mini FLUX full precision vs ternary (python -m torch_ternary.demo)")
    d.add_argument("--out", default="demo_mini_flux.png", help="side-by-side PNG (default demo_mini_flux.png)")
    d.add_argument("--flux", action="store_true", help="then run the random-weight FLUX-architecture check")
    d.add_argument("--no-compile", action="store_true", help="with --flux: skip that check's torch.compile run")
    d.set_defaults(func=cmd_demo)

    from .calibration.cli import add_parser as add_calibrate

    add_calibrate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torch-ternary`` command; returns the exit status."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("torch-ternary: interrupted", file=sys.stderr)
        return 130
    except (UserError, TernaryError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        return _fail(e)
    except (OSError, ValueError) as e:  # diffusers / safetensors refusing a bad folder or file
        return _fail(e)
    except Exception as e:
        from safetensors import SafetensorError

        if isinstance(e, SafetensorError):
            return _fail(e)
        raise


def _fail(e: BaseException) -> int:
    message = " ".join(str(e).split()) or type(e).__name__
    print(f"torch-ternary: error: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
