"""Teacher trajectories: what the full-precision pipeline does on text prompts, recorded for distillation.

:func:`record_trajectories` runs a diffusers ``FluxPipeline`` (any: Mini FLUX or FLUX.1-dev) with its
own sampler and guidance on batches of prompts and records every transformer call through a
forward hook: the noisy latents ``x_t``, the timestep, the text conditioning and the teacher's
velocity. With true classifier-free guidance both the conditional and the unconditional calls are
recorded. With ``target=`` another transformer labels the calls instead: the pipeline samples with
its own transformer (e.g. the ternary student) while the recorded velocity is the target's (the
teacher's) at those same inputs — *on-policy* records, the states the student actually visits.
Each prompt batch becomes one shard ``traj-XXXXX.safetensors``:

=====================  =======================  =================================================
key                    dtype, shape             content
=====================  =======================  =================================================
``hidden_states``      storage ``[S, L, C]``    ``x_t`` of each recorded call and batch row
``velocity``           storage ``[S, L, C]``    the teacher's (or ``target``'s) output for it
``timestep``           float32 ``[S]``          the transformer's ``timestep`` input (sigma)
``guidance``           float32 ``[S]``          (guidance-distilled models only)
``text_index``         int64 ``[S]``            row of the text tensors below
``encoder_hidden_states``  storage ``[P, T, D]``  distinct text conditionings of the shard
``pooled_projections``     storage ``[P, Dp]``
``img_ids`` / ``txt_ids``  float32 ``[L, 3]`` / ``[T, 3]``
=====================  =======================  =================================================

``manifest.json`` lists the prompts and finished shards, so an interrupted recording resumes where
it stopped (``resume=True``). Shards are written atomically. No image is produced or read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import TernaryConfigError, TernaryError
from ..format.atomic import atomic_write

MANIFEST = "manifest.json"


class TrajectoryError(TernaryError, ValueError):
    """A trajectory folder that is missing, incomplete or inconsistent."""


class _CallRecorder:
    """Forward hook (with kwargs) collecting the transformer's inputs and outputs (or ``target``'s outputs)."""

    def __init__(self, target=None):
        self.records: list[dict] = []
        self.target = target

    def __call__(self, module, args, kwargs, output):
        if self.target is not None:
            with torch.no_grad():
                output = self.target(*args, **kwargs)
        out = output[0] if isinstance(output, (tuple, list)) else output.sample
        self.records.append({
            "hidden_states": kwargs["hidden_states"].detach().cpu(),
            "timestep": kwargs["timestep"].detach().float().cpu().expand(out.shape[0]),
            "guidance": None if kwargs.get("guidance") is None else kwargs["guidance"].detach().float().cpu(),
            "encoder_hidden_states": kwargs["encoder_hidden_states"].detach().cpu(),
            "pooled_projections": kwargs["pooled_projections"].detach().cpu(),
            "img_ids": kwargs["img_ids"].detach().float().cpu(),
            "txt_ids": kwargs["txt_ids"].detach().float().cpu(),
            "velocity": out.detach().cpu(),
        })


def _digest(t: torch.Tensor) -> str:
    return hashlib.blake2b(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()


def cfg_pairs(hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """The (conditional, unconditional) record pairs of one trajectory shard: rows with byte-identical
    ``x_t`` and equal timestep, the earlier of two being the conditional call (diffusers' ``FluxPipeline``
    calls the conditional batch first); rows without exactly one partner take no part. The guided loss
    (:mod:`.guided`) reads them.

    Args:
        hidden_states: ``[S, L, C]`` (any dtype) the recorded ``x_t`` of each record, in recording order.
        timestep: float32 ``[S]`` the recorded timestep of each record.

    Returns:
        int64 ``[P, 2]``: row ``p`` holds the conditional record's index and its unconditional partner's
        (the later of the two), ordered by the conditional index; ``[0, 2]`` when no record has a partner.
    """
    if hidden_states.shape[0] != timestep.shape[0]:
        raise TernaryConfigError(f"hidden_states has {hidden_states.shape[0]} records, timestep {timestep.shape[0]}")
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(timestep.float().tolist()):
        groups.setdefault((_digest(hidden_states[i]), t), []).append(i)
    pairs = sorted(rows for rows in groups.values() if len(rows) == 2)
    return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)


def _shard_tensors(records: list[dict], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    texts: list[torch.Tensor] = []
    pooled: list[torch.Tensor] = []
    keys: dict[tuple, int] = {}
    index: list[int] = []
    for r in records:
        for row in range(r["hidden_states"].shape[0]):
            e, p = r["encoder_hidden_states"][row], r["pooled_projections"][row]
            key = (_digest(e), _digest(p))
            if key not in keys:
                keys[key] = len(texts)
                texts.append(e)
                pooled.append(p)
            index.append(keys[key])
    out = {
        "hidden_states": torch.cat([r["hidden_states"] for r in records]).to(dtype),
        "velocity": torch.cat([r["velocity"] for r in records]).to(dtype),
        "timestep": torch.cat([r["timestep"] for r in records]),
        "text_index": torch.tensor(index, dtype=torch.int64),
        "encoder_hidden_states": torch.stack(texts).to(dtype),
        "pooled_projections": torch.stack(pooled).to(dtype),
        "img_ids": records[0]["img_ids"],
        "txt_ids": records[0]["txt_ids"],
    }
    if records[0]["guidance"] is not None:
        out["guidance"] = torch.cat([r["guidance"] for r in records])
    return {k: v.contiguous() for k, v in out.items()}


def record_trajectories(pipe, prompts: list[str], out_dir: str | Path, batch_size: int = 16, seed: int = 0,
                        storage_dtype: torch.dtype = torch.float16, resume: bool = True, progress: bool = True,
                        target=None, ranks=None, **pipe_kwargs) -> Path:
    """Run ``pipe`` on ``prompts`` and record every transformer call to sharded safetensors.

    Args:
        pipe: a diffusers ``FluxPipeline`` (full precision: the teacher; or the student, with ``target``).
        prompts: text prompts; prompt ``i`` uses seed ``seed + i`` for its starting noise.
        out_dir: folder for ``manifest.json`` and the shards.
        batch_size: prompts per pipeline call (= per shard).
        storage_dtype: dtype of the stored latents, velocities and text tensors.
        resume: skip shards already listed in the manifest (the prompt list must match).
        progress: show a tqdm bar over shards.
        target: a transformer taking the same inputs (the teacher) whose output is recorded as the
            velocity instead of ``pipe.transformer``'s; ``None`` records ``pipe.transformer``'s own.
        ranks: a :class:`~.distributed.Ranks` (default: one process). With N ranks, shard ``i`` is
            recorded by rank ``i % N`` (same files as one process writes); rank 0 writes the manifest
            (first the settings, at the end every shard), the others wait for it.
        **pipe_kwargs: passed to the pipeline call (steps, guidance, size, ...).

    Returns:
        ``out_dir``.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    manifest = {"prompts": list(prompts), "batch_size": batch_size, "seed": seed, "shards": [], "labelled_by_target": target is not None,
                "pipe_kwargs": {k: v for k, v in pipe_kwargs.items() if isinstance(v, (int, float, str, bool))}}
    if resume and manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if (old.get("prompts") != manifest["prompts"] or old.get("batch_size") != batch_size or old.get("seed") != seed
                or old.get("labelled_by_target", False) != manifest["labelled_by_target"]):
            raise TrajectoryError(f"{out} holds trajectories of other prompts/settings; use another folder or resume=False")
        manifest["shards"] = [s for s in old["shards"] if (out / s["file"]).exists()]
    from .distributed import Ranks

    ranks = ranks or Ranks()
    if ranks.distributed:
        return _record_distributed(pipe, prompts, out, manifest, batch_size, seed, storage_dtype, progress, target,
                                   ranks, pipe_kwargs)
    done = {s["first_prompt"] for s in manifest["shards"]}
    starts = [i for i in range(0, len(prompts), batch_size) if i not in done]
    recorder = _CallRecorder(target)
    handle = pipe.transformer.register_forward_hook(recorder, with_kwargs=True)
    try:
        desc = "on-policy trajectories" if target is not None else "teacher trajectories"
        for i in tqdm(starts, desc=desc, unit="shard", disable=not progress):
            manifest["shards"].append(_record_shard(pipe, recorder, prompts, i, batch_size, seed, storage_dtype, out,
                                                    pipe_kwargs))
            atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    finally:
        handle.remove()
    return out


def _record_shard(pipe, recorder, prompts, i, batch_size, seed, storage_dtype, out: Path, pipe_kwargs) -> dict:
    """Record prompts ``i .. i + batch_size - 1`` into their shard file; returns its manifest entry."""
    batch = prompts[i:i + batch_size]
    gens = [torch.Generator("cpu").manual_seed(seed + i + j) for j in range(len(batch))]
    recorder.records.clear()
    with torch.no_grad():
        pipe(batch, generator=gens, output_type="latent", **pipe_kwargs)
    tensors = _shard_tensors(recorder.records, storage_dtype)
    name = f"traj-{i // batch_size:05d}.safetensors"
    atomic_write(out / name, lambda tmp: save_file(tensors, str(tmp)))
    return {"file": name, "first_prompt": i, "prompts": len(batch), "records": int(tensors["timestep"].shape[0])}


def _record_distributed(pipe, prompts, out: Path, manifest: dict, batch_size, seed, storage_dtype, progress, target,
                        ranks, pipe_kwargs) -> Path:
    """:func:`record_trajectories` over ranks (see there). A shard already on disk under a manifest of the
    same settings is kept (resume); the manifest lists every shard once all ranks are done."""
    from tqdm.auto import tqdm

    manifest_path = out / MANIFEST
    if ranks.main:  # settings first: a resumed run checks them before trusting the shard files
        atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    ranks.barrier()
    listed = {s["first_prompt"] for s in manifest["shards"]}
    mine = [i for i in range(0, len(prompts), batch_size) if ranks.owns(i // batch_size) and i not in listed
            and not (out / f"traj-{i // batch_size:05d}.safetensors").exists()]
    recorder = _CallRecorder(target)
    handle = pipe.transformer.register_forward_hook(recorder, with_kwargs=True)
    try:
        desc = f"{'on-policy' if target is not None else 'teacher'} trajectories, rank {ranks.rank}/{ranks.world}"
        for i in tqdm(mine, desc=desc, unit="shard", disable=not progress):
            _record_shard(pipe, recorder, prompts, i, batch_size, seed, storage_dtype, out, pipe_kwargs)
    finally:
        handle.remove()
    ranks.barrier()
    if ranks.main:
        from safetensors import safe_open

        entries = []
        for i in range(0, len(prompts), batch_size):
            name = f"traj-{i // batch_size:05d}.safetensors"
            with safe_open(str(out / name), "pt") as f:
                records = int(f.get_slice("timestep").get_shape()[0])
            entries.append({"file": name, "first_prompt": i, "prompts": len(prompts[i:i + batch_size]), "records": records})
        manifest["shards"] = entries
        atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    ranks.barrier()
    return out


class TrajectoryDataset:
    """Random mini-batches of recorded transformer calls, all shards held in memory (as stored).

    Args:
        folder: a folder written by :func:`record_trajectories` (complete), or a list of such folders
            (their shards are pooled: e.g. teacher and on-policy records).
        device: where batches go. dtype: the float dtype of returned inputs and targets.
    """

    def __init__(self, folder: str | Path | list, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        folders = list(folder) if isinstance(folder, (list, tuple)) else [folder]
        if not folders:
            raise TrajectoryError("no trajectory folder given")
        self.device, self.dtype = torch.device(device), dtype
        self.shards, self.prompts = [], []
        self._pairs: list[torch.Tensor] | None = None
        for f in folders:
            self.extend(f)

    def extend(self, folder: str | Path) -> None:
        """Pool the records of another complete folder with those already loaded (which are not read again)."""
        folder = Path(folder)
        if not (folder / MANIFEST).exists():
            raise TrajectoryError(f"{folder}: no {MANIFEST}; record trajectories first")
        manifest = json.loads((folder / MANIFEST).read_text())
        expected = -(-len(manifest["prompts"]) // manifest["batch_size"])
        present = [s for s in manifest["shards"] if (folder / s["file"]).exists()]
        if len(present) != expected:
            raise TrajectoryError(f"{folder}: {len(present)} of {expected} shards recorded; resume the recording")
        self.shards += [load_file(str(folder / s["file"])) for s in sorted(present, key=lambda s: s["first_prompt"])]
        self.prompts += manifest["prompts"]
        self.sizes = np.array([s["timestep"].shape[0] for s in self.shards])
        self._pairs = None

    def __len__(self) -> int:
        return int(self.sizes.sum())

    #: The kwargs of :meth:`batch` with one row per record (a rank trains on a slice of these).
    PER_RECORD = ("hidden_states", "timestep", "encoder_hidden_states", "pooled_projections", "guidance")

    def batch(self, size: int, rng: np.random.Generator) -> tuple[dict, torch.Tensor]:
        """``(transformer kwargs, teacher velocity)`` for ``size`` records drawn uniformly (one shard per batch)."""
        shard = self.shards[int(rng.choice(len(self.shards), p=self.sizes / self.sizes.sum()))]
        rows = torch.from_numpy(rng.choice(shard["timestep"].shape[0], size=min(size, shard["timestep"].shape[0]), replace=False))
        return self.take(shard, rows)

    def paired_batch(self, size: int, rng: np.random.Generator) -> tuple[dict, torch.Tensor]:
        """``size // 2`` classifier-free-guidance pairs (:func:`cfg_pairs`) drawn uniformly from one
        shard, as ``(transformer kwargs, teacher velocity)`` with interleaved rows: ``2p`` the conditional
        call of pair ``p``, ``2p + 1`` its unconditional partner (what :func:`~.guided.guided_error` reads)."""
        if self._pairs is None:
            self._pairs = [cfg_pairs(s["hidden_states"], s["timestep"]) for s in self.shards]
        counts = np.array([p.shape[0] for p in self._pairs])
        if counts.sum() == 0:
            raise TrajectoryError("no (conditional, unconditional) record pairs: these trajectories were recorded "
                                  "without true classifier-free guidance, so there is no guided velocity to match")
        i = int(rng.choice(len(self.shards), p=counts / counts.sum()))
        pick = torch.from_numpy(rng.choice(int(counts[i]), size=min(size // 2, int(counts[i])), replace=False))
        return self.take(self.shards[i], self._pairs[i][pick].reshape(-1))

    def take(self, shard: dict, rows: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """The records ``rows`` of a shard as ``(transformer kwargs, velocity)``."""
        dev, dt = self.device, self.dtype
        t_idx = shard["text_index"][rows]
        kwargs = dict(
            hidden_states=shard["hidden_states"][rows].to(dev, dt),
            timestep=shard["timestep"][rows].to(dev, dt),
            encoder_hidden_states=shard["encoder_hidden_states"][t_idx].to(dev, dt),
            pooled_projections=shard["pooled_projections"][t_idx].to(dev, dt),
            img_ids=shard["img_ids"].to(dev, dt),
            txt_ids=shard["txt_ids"].to(dev, dt),
            return_dict=False,
        )
        if "guidance" in shard:
            kwargs["guidance"] = shard["guidance"][rows].to(dev, dt)
        return kwargs, shard["velocity"][rows].to(dev, dt)

    def iterate(self, size: int):
        """Every record once, in order, as ``(kwargs, velocity)`` batches of at most ``size``."""
        for shard in self.shards:
            n = shard["timestep"].shape[0]
            for r0 in range(0, n, size):
                yield self.take(shard, torch.arange(r0, min(n, r0 + size)))
