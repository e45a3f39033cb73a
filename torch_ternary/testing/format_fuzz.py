"""A fuzz harness for the ternary file loaders: valid files, mutated, loaded; every outcome classified.

Used by ``tests/format/test_fuzz.py`` (a few hundred hypothesis cases in CI) and by
``benchmarks/fuzz_format.py`` (the recorded 10,000-case run). A case is (target, mutation class, seed,
verify). The targets are ``load_quantized`` on a single file (base-3 and 2-bit), ``load_quantized_folder``
on a sharded folder, and ``torch-ternary info`` on both. The original files come from a small model that
holds every kind of entry (per-channel, per-group and per-tensor ternary weights, an int8-activation layer,
a dense linear, a LayerNorm, an integer buffer, a tied weight).

Mutation classes (:data:`MUTATIONS`), each applied to a fresh copy of a valid file or folder:

- raw bytes: ``bit_flip`` (one bit anywhere), ``truncate``, ``append`` (garbage after the end);
- the safetensors index (JSON at the start of a file): ``st_dtype``, ``st_shape``, ``st_offsets``;
- the torch-ternary header (half the time with its CRC32 removed, as in files written before 0.2, so
  that ``verify=True`` reaches the checks behind it): ``tt_type`` (a field's value replaced by one of another type), ``tt_shape``,
  ``tt_size`` (absurd declared sizes), ``tt_group_size``, ``tt_codec``, ``tt_version``, ``tt_dtype``,
  ``tt_alias`` (aliases to wrong, missing or self targets, the aliased tensor dropped), ``tt_crc``,
  ``tt_config`` (invalid or unknown config fields), ``tt_drop`` (a stored tensor removed);
- a folder's shard index: ``index_path`` (shard names outside the folder or missing), ``index_type``
  (wrong JSON types, broken JSON, truncation).

Outcomes (:func:`run_case`): ``loaded_equal``; ``loaded_differs_unverified`` (``verify=False``, and the
change gave a file that is consistent but not the original's: a flipped bit of dense data, an edited but
coherent header; the documented price of skipping checksums); ``loaded_differs_unchecked_header`` (a
coherent header edit of a file that carries no header CRC32, as files written before 0.2: a valid file
of another model, which nothing can tell from the original); the name of a
:class:`~torch_ternary.errors.TernaryError` subclass; ``info_ok`` / ``info_refused`` for the CLI. Failures
(:data:`FAILURES`): ``untyped:<exception>``, ``changed_model`` (a failed load touched the model),
``wrong_load`` (a load that differs although the change was detectable), ``hang`` (over the time limit),
``info_traceback``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

MUTATIONS = (
    "bit_flip", "truncate", "append", "st_dtype", "st_shape", "st_offsets",
    "tt_type", "tt_shape", "tt_size", "tt_group_size", "tt_codec", "tt_version", "tt_dtype", "tt_alias", "tt_crc",
    "tt_config", "tt_drop", "index_path", "index_type",
)
TARGETS = ("file_base3", "file_2bit", "folder", "info_file", "info_folder")
#: every (target, mutation) pair that applies (a single file has no shard index)
CASES = tuple((t, m) for t in TARGETS for m in MUTATIONS if "folder" in t or not m.startswith("index_"))
#: outcomes that mean the loader is wrong
FAILURES = ("untyped", "changed_model", "wrong_load", "hang", "info_traceback")
#: seconds a case may take before it counts as a hang
TIME_LIMIT = 20


class FuzzNet(nn.Module):
    """Every kind of state-dict entry a ternary file holds."""

    def __init__(self):
        super().__init__()
        self.chan = nn.Linear(40, 48)
        self.group = nn.Linear(48, 48, bias=False)
        self.tensor = nn.Linear(48, 32)
        self.a8 = nn.Linear(32, 32)
        self.dense = nn.Linear(32, 8)
        self.tied = nn.Linear(48, 48, bias=False)
        self.tied.weight = self.group.weight
        self.norm = nn.LayerNorm(32)
        self.register_buffer("steps", torch.tensor([3, 1, 4], dtype=torch.int64))


def build_model(seed: int) -> FuzzNet:
    """A ternarized :class:`FuzzNet` (bfloat16), different for each seed."""
    from ..quantization.config import TernaryConfig, ternarize_linear

    torch.manual_seed(seed)
    model = FuzzNet().to(torch.bfloat16)
    for name, cfg in (("chan", TernaryConfig()), ("group", TernaryConfig(granularity="per_group", group_size=16)),
                      ("tensor", TernaryConfig(granularity="per_tensor")), ("a8", TernaryConfig(activations="int8"))):
        ternarize_linear(getattr(model, name), cfg)
    model.tied.weight = model.group.weight
    model._torch_ternary_config = TernaryConfig()
    return model


def state_of(model: nn.Module) -> dict:
    """Comparable content of every entry (class, dtype, shape, data; layouts of ternary weights; ties)."""
    from ..tensor import TernaryTensor

    out, ids = {}, {}
    for name, t in model.state_dict(keep_vars=True).items():
        tie = ids.setdefault(id(t), name)
        if t.device.type == "meta":
            data = "meta"
        elif isinstance(t, TernaryTensor):
            data = (t.packed.numpy().tobytes(), t.scale.numpy().tobytes(), t.group_size, t.activations)
        else:
            data = t.detach().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        out[name] = (type(t).__name__, t.dtype, tuple(t.shape), t.requires_grad, tie, data)
    return out


@dataclass
class Originals:
    """The valid files every case starts from, and what loading them gives."""

    root: Path
    expected: dict

    @property
    def file_base3(self) -> Path:
        return self.root / "model_base3.safetensors"

    @property
    def file_2bit(self) -> Path:
        return self.root / "model_2bit.safetensors"

    @property
    def folder(self) -> Path:
        return self.root / "folder"


def make_originals(root: Path) -> Originals:
    """Write the valid files (single base-3, single 2-bit, a sharded folder) of :func:`build_model` (seed 0)."""
    from ..format.folder import save_quantized_folder
    from ..format.single_file import save_quantized

    root.mkdir(parents=True, exist_ok=True)
    model = build_model(0)
    save_quantized(model, root / "model_base3.safetensors", codec="base3")
    save_quantized(model, root / "model_2bit.safetensors", codec="2bit")
    save_quantized_folder(model, root / "folder", max_shard_size=1200)
    # what makes it a model folder to `torch-ternary info` (FuzzNet has no diffusers config of its own)
    (root / "folder" / "config.json").write_text(json.dumps({"_class_name": "FuzzNet"}))
    return Originals(root, state_of(model))


# ----------------------------------------------------------------------------------------- mutations
def _split(data: bytes) -> tuple[int, dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return n, json.loads(data[8:8 + n]), data[8 + n:]


def _join(index: dict, body: bytes) -> bytes:
    raw = json.dumps(index, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _other_type(value, rng: random.Random):
    choices = [None, True, 7, -3, 2.5, "x", [], [1, 2], {}, {"a": 1}, 2**70]
    return rng.choice([c for c in choices if type(c) is not type(value)])


def _pick_path(header: dict, rng: random.Random) -> list:
    """A random key path into the header (a field at any depth)."""
    path, node = [], header
    while isinstance(node, dict) and node:
        key = rng.choice(sorted(node, key=str))
        path.append(key)
        node = node[key]
        if rng.random() < 0.4:
            break
    return path


def _set_path(header: dict, path: list, value) -> None:
    node = header
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _mutate_tt(header: dict, tensors: dict, kind: str, rng: random.Random) -> None:
    layers = header["ternary"]
    name = rng.choice(sorted(layers))
    stored = sorted(tensors)
    if kind == "tt_type":
        path = _pick_path(header, rng) or ["ternary"]
        node = header
        for key in path[:-1]:
            node = node[key]
        _set_path(header, path, _other_type(node[path[-1]], rng))
    elif kind == "tt_shape":
        layers[name]["shape"] = rng.choice([[0, 48], [-1, 48], [48], [48, 48, 1], [1, 1], [48, 47], [96, 48], [48, 49]])
    elif kind == "tt_size":
        big = rng.choice([1 << 20, 1 << 31, 1 << 40, 1 << 62, 10**30])
        layers[name]["shape"] = rng.choice([[big, big], [big, 48], [48, big]])
    elif kind == "tt_group_size":
        layers[name]["group_size"] = rng.choice([0, -16, 1, 15, 17, 10**9, 32, 48, 64])
    elif kind == "tt_codec":
        header["codec"] = rng.choice(["2bit", "base3", "base7", "", None])
    elif kind == "tt_version":
        header["format_version"] = rng.choice([0, 2, 99, -1, "1", 1.0, True])
    elif kind == "tt_dtype":
        layers[name]["dtype"] = rng.choice(["float32", "float16", "bfloat16", "int8", "float64", "", None])
    elif kind == "tt_alias":
        target = rng.choice(stored + sorted(layers) + ["nowhere"])
        alias = rng.choice(sorted(set(k.split(".ternary_")[0] for k in stored)) + ["new.name"])
        header["aliases"][alias] = target
        if rng.random() < 0.7:  # the aliased entry's own data removed, as a real alias has none
            for key in [k for k in stored if k == alias or k.startswith(alias + ".ternary_")]:
                tensors.pop(key, None)
                header["crc32"].pop(key, None)
    elif kind == "tt_crc":
        key = rng.choice(sorted(header["crc32"]))
        header["crc32"][key] = rng.choice([(header["crc32"][key] + 1) % (1 << 32), -1, 1 << 33, "0"])
    elif kind == "tt_config":
        field = rng.choice(["granularity", "group_size", "preset", "include", "exclude", "min_numel", "activations",
                            "unknown_field"])
        header["config"] = dict(header["config"] or {})
        header["config"][field] = rng.choice(["per_pixel", -1, 0, 17, None, [1], "x", {"a": 1}, ["*"], 2**40])
    elif kind == "tt_drop":
        key = rng.choice(stored)
        tensors.pop(key)


def rewrite_file(path: Path, header_fn=None, tensors_fn=None, header_crc: str = "recompute") -> None:
    """Rewrite a ternary file with its torch-ternary header and/or its tensors edited.

    Args:
        path: a ternary ``.safetensors`` file (rewritten in place).
        header_fn: ``(header dict) -> None``, edits the parsed header.
        tensors_fn: ``({key: tensor}) -> None``, edits the stored tensors.
        header_crc: ``"recompute"`` (a coherent edit, as a writer would make it), ``"keep"`` (the old CRC32:
            corruption) or ``"drop"`` (no header CRC32, as files written before 0.2).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..format.header import HEADER_CRC_KEY, HEADER_KEY

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta[HEADER_KEY])
    if header_fn is not None:
        header_fn(header)
    if tensors_fn is not None:
        tensors_fn(tensors)
    meta[HEADER_KEY] = json.dumps(header)
    if header_crc == "recompute":
        meta[HEADER_CRC_KEY] = str(zlib.crc32(meta[HEADER_KEY].encode()))
    elif header_crc == "drop":
        meta.pop(HEADER_CRC_KEY, None)
    save_file(tensors, str(path), metadata=meta)


def _rewrite_tt(path: Path, kind: str, rng: random.Random) -> str:
    state = {}
    unchecked = rng.random() < 0.5  # half the time as a file written before the header had its CRC32 (0.1.0)
    rewrite_file(path, lambda h: state.setdefault("header", h), lambda t: _mutate_tt(state["header"], t, kind, rng),
                 header_crc="drop" if unchecked else "keep")
    return "header_unchecked" if unchecked else "header"


def _mutate_bytes(path: Path, kind: str, rng: random.Random) -> str:
    """Apply a byte-level mutation to ``path``; return the region it touched: ``length``, ``index`` or ``data``."""
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", bytes(data[:8]))[0]
    if kind == "bit_flip":
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        region = "length" if pos < 8 else "index" if pos < 8 + n else "data"
    elif kind == "truncate":
        data = data[:rng.randrange(len(data))]
        region = "index"
    elif kind == "append":
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        region = "index"
    else:
        _, index, body = _split(bytes(data))
        key = rng.choice(sorted(k for k in index if k != "__metadata__"))
        entry = index[key]
        if kind == "st_dtype":
            entry["dtype"] = rng.choice(["F32", "F16", "BF16", "U8", "I64", "F64", "BOOL", "F8_E4M3", "XX"])
        elif kind == "st_shape":
            entry["shape"] = rng.choice([[], [0], [1], [entry["shape"][0] * 2 if entry["shape"] else 2], [1 << 40]])
        else:
            lo, hi = entry["data_offsets"]
            entry["data_offsets"] = rng.choice([[lo, hi + 1], [lo + 1, hi], [hi, lo], [0, len(body) + 8], [lo, 1 << 50]])
        data = bytearray(_join(index, body))
        region = "index"
    path.write_bytes(bytes(data))
    return region


def _mutate_index(folder: Path, kind: str, rng: random.Random) -> None:
    from ..format.folder import INDEX_SUFFIX, WEIGHTS_NAME

    path = folder / (WEIGHTS_NAME + INDEX_SUFFIX)
    text = path.read_text()
    index = json.loads(text)
    if kind == "index_path":
        key = rng.choice(sorted(index["weight_map"]))
        index["weight_map"][key] = rng.choice(["../model_base3.safetensors", "/etc/hostname", "sub/x.safetensors", "..",
                                               ".", "", "missing.safetensors", "a\\b.safetensors",
                                               str((folder / "x").resolve())])
        path.write_text(json.dumps(index))
    else:
        choice = rng.randrange(5)
        if choice == 0:
            index["weight_map"] = _other_type(index["weight_map"], rng)
        elif choice == 1:
            index = _other_type(index, rng)
        elif choice == 2:
            key = rng.choice(sorted(index["weight_map"]))
            index["weight_map"][key] = _other_type("x", rng)
        if choice < 3:
            path.write_text(json.dumps(index))
        elif choice == 3:
            path.write_text(text[:rng.randrange(len(text))])
        else:
            path.write_bytes(b"\xff\xfe" + text.encode()[2:])


def mutate(originals: Originals, target: str, kind: str, seed: int, work: Path) -> tuple[Path, str]:
    """A mutated copy of the original for ``target`` in ``work``: ``(path to load, region touched)``."""
    rng = random.Random(seed)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if target in ("folder", "info_folder"):
        dst = work / "folder"
        shutil.copytree(originals.folder, dst)
        shards = sorted(p for p in dst.iterdir() if p.name.endswith(".safetensors"))
        if kind.startswith("index_"):
            _mutate_index(dst, kind, rng)
            return dst, "index"
        victim = rng.choice(shards)
    else:
        src = originals.file_2bit if target == "file_2bit" else originals.file_base3
        dst = victim = work / src.name
        shutil.copy(src, dst)
        if kind.startswith("index_"):
            raise ValueError(f"{kind} needs a folder target (see CASES)")
    if kind.startswith("tt_"):
        region = _rewrite_tt(victim, kind, rng)
    else:
        region = _mutate_bytes(victim, kind, rng)
    return dst, region


# ------------------------------------------------------------------------------------------ running
class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int):
    if not hasattr(signal, "SIGALRM"):  # pragma: no cover - Windows
        yield
        return

    def alarm(signum, frame):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_case(originals: Originals, target: str, kind: str, seed: int, verify: bool, work: Path) -> str:
    """Mutate, load (or ``info``), classify. Returns the outcome (see the module docstring)."""
    from ..errors import TernaryError

    path, region = mutate(originals, target, kind, seed, work)
    if target.startswith("info"):
        return _run_info(path, seed)
    from ..format.folder import load_quantized_folder
    from ..format.single_file import load_quantized

    model = build_model(1)  # what a load would overwrite: any partial write shows
    before = state_of(model)
    try:
        with _time_limit(TIME_LIMIT):
            (load_quantized_folder if target == "folder" else load_quantized)(model, path, verify=verify)
    except _Hang:
        return "hang"
    except TernaryError as e:
        return type(e).__name__ if state_of(model) == before else "changed_model"
    except Exception as e:  # noqa: BLE001 - the harness classifies every exception
        return f"untyped:{type(e).__name__}" if state_of(model) == before else "changed_model"
    after = state_of(model)
    if after == originals.expected:
        return "loaded_equal"
    if not verify and region != "length":  # only checksums could have told
        return "loaded_differs_unverified"
    if region == "header_unchecked":  # a coherent header edit of a file without a header CRC32: a valid file
        return "loaded_differs_unchecked_header"
    return "wrong_load"


def _run_info(path: Path, seed: int) -> str:
    from ..cli import main

    argv = ["info", str(path)] + (["--json"] if seed % 2 else []) + (["--layers"] if seed % 3 == 0 else [])
    out, err = io.StringIO(), io.StringIO()
    try:
        with _time_limit(TIME_LIMIT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    except _Hang:
        return "hang"
    except Exception as e:  # noqa: BLE001
        return f"untyped:{type(e).__name__}"
    message = err.getvalue().strip()
    if status == 0:
        return "info_ok"
    if status == 2 and len(message.splitlines()) == 1 and "Traceback" not in message:
        return "info_refused"
    return "info_traceback"


def is_failure(outcome: str) -> bool:
    """Whether an outcome of :func:`run_case` shows a loader bug."""
    return outcome.split(":")[0] in FAILURES


def env_summary() -> dict:
    """Versions recorded beside a fuzz run."""
    import platform

    import safetensors

    from .._version import __version__

    return {"torch": torch.__version__, "safetensors": safetensors.__version__, "torch_ternary": __version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
