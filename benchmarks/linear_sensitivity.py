"""Per-linear sensitivity of the shipped ternary Mini FLUX: what each ternary linear costs, alone and in the whole.

    python benchmarks/linear_sensitivity.py [--prompts 32] [--prompt-seed 7000] [--records 320]

The teacher (the shipped full-precision transformer) samples ``--prompts`` prompts of the *calibration*
split (``mini-calibration``, prompt seed ``--prompt-seed``, noise seeds from 7000: no validation caption, no
evaluation prompt, no seed of either) with its own sampler; ``--records`` of the recorded transformer calls
(every ``k``-th, all timesteps) are the probe set. The error of a model is the relative squared error of its
velocity against the teacher's over the probe set, ``sum ||v - v_T||^2 / sum ||v_T||^2``. Two measures per
ternary linear of the shipped model, both on float32 dense copies (the ternary weight ``scale * q`` as a
dense tensor: the same product as the ternary kernels up to float rounding):

* ``alone``: the teacher with only this linear ternarized, by absmean per channel (``TernaryTensor.from_float``):
  what the linear costs by itself, before any calibration (``alone_shipped``: the same with the shipped model's
  codes and scales, which were trained together with every other linear's);
* ``restored``: the shipped ternary model with only this linear back in full precision (``gain`` = the shipped
  model's error minus this one's). QAT trains the linears together, so the others compensate each one's error:
  putting one back alone mostly *raises* the error (a negative gain); a linear to keep dense
  (``TernaryConfig(exclude=...)``) must be chosen before calibration, by ``alone``.

The issue's budget for linears kept dense is 1 % of the transformer's parameters on top of what stays dense
today; each row says whether the linear fits it alone. Writes ``benchmarks/results/linear_sensitivity.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from common import write_results  # noqa: E402
from torch_ternary.calibration.prompts import mini_calibration_prompts  # noqa: E402
from torch_ternary.calibration.trajectories import TrajectoryDataset, record_trajectories  # noqa: E402
from torch_ternary.mini import load_pipeline  # noqa: E402
from torch_ternary.tensor import TernaryTensor  # noqa: E402

#: fraction of the transformer's parameters the issue lets stay dense beyond today's dense layers
DENSE_BUDGET = 0.01


def dense_copy(ternary: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A float32 dense copy of ``ternary`` and the dense ternary weight (float32 ``[out, in]``) of each ternary linear."""
    model = copy.deepcopy(ternary)
    weights = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and isinstance(mod.weight, TernaryTensor):
            weights[name] = mod.weight.dequantize(torch.float32).detach().clone()
            mod.weight = nn.Parameter(weights[name].clone(), requires_grad=False)
    return model, weights


@torch.inference_mode()
def relative_error(model: nn.Module, probes: list[tuple[dict, torch.Tensor]]) -> float:
    """``sum ||model(x) - v_T||^2 / sum ||v_T||^2`` over the probe batches (float64 sums)."""
    num = den = 0.0
    for kwargs, target in probes:
        out = model(**kwargs)[0]
        num += float((out.double() - target.double()).pow(2).sum())
        den += float(target.double().pow(2).sum())
    return num / den


def probe_set(pipe, prompts: list[str], records: int, seed: int, folder: Path, batch: int = 64, **pipe_kwargs):
    """Teacher records of ``prompts`` (every k-th call, about ``records`` of them) as float32 ``(kwargs, velocity)``
    batches, and the counts of recorded and kept calls. ``pipe_kwargs``: the pipeline call's (e.g. fewer steps)."""
    record_trajectories(pipe, prompts, folder, batch_size=16, seed=seed, storage_dtype=torch.float32, progress=False,
                        **pipe_kwargs)
    data = TrajectoryDataset(folder)
    stride = max(1, len(data) // records)
    probes = []
    for shard in data.shards:
        rows = torch.arange(0, shard["timestep"].shape[0], stride)
        for r0 in range(0, rows.numel(), batch):
            probes.append(data.take(shard, rows[r0:r0 + batch]))
    return probes, len(data), sum(p[1].shape[0] for p in probes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="calibration-split prompts the teacher samples")
    parser.add_argument("--prompt-seed", type=int, default=7000, help="seed of the prompt draw and of the noise")
    parser.add_argument("--records", type=int, default=320, help="recorded calls in the probe set")
    parser.add_argument("--out", default="linear_sensitivity")
    args = parser.parse_args()
    torch.manual_seed(0)
    t_start = time.time()
    pipe = load_pipeline()
    teacher = pipe.transformer
    shipped, ternary_weights = dense_copy(load_pipeline(quantized=True).transformer)
    prompts = mini_calibration_prompts(args.prompts, seed=args.prompt_seed)
    with tempfile.TemporaryDirectory() as tmp:
        probes, recorded, used = probe_set(pipe, prompts, args.records, args.prompt_seed, Path(tmp))
    total_params = sum(p.numel() for p in teacher.parameters())
    budget = int(DENSE_BUDGET * total_params)
    base_error = relative_error(shipped, probes)
    fp_modules = dict(teacher.named_modules())
    sh_modules = dict(shipped.named_modules())
    rows = []
    for name, w_t in ternary_weights.items():
        fp_w = fp_modules[name].weight
        saved = fp_w.data.clone()
        fp_w.data.copy_(TernaryTensor.from_float(saved, "per_channel").dequantize(torch.float32))
        alone = relative_error(teacher, probes)  # the teacher with only this linear ternarized (absmean)
        fp_w.data.copy_(w_t)
        alone_shipped = relative_error(teacher, probes)  # ... with the shipped codes and scales
        fp_w.data.copy_(saved)
        sh_w = sh_modules[name].weight
        sh_w.data.copy_(saved)  # the shipped model with this linear in full precision
        restored = relative_error(shipped, probes)
        sh_w.data.copy_(w_t)
        params = fp_w.numel()
        rows.append({"linear": name, "params": params, "fits_budget": params <= budget, "alone": alone,
                     "alone_shipped": alone_shipped, "restored": restored, "gain": base_error - restored,
                     "gain_share": (base_error - restored) / base_error})
        print(f"{name:45s} {params:8d}  alone {alone:.5f} (shipped codes {alone_shipped:.5f})  restored {restored:.5f}  gain {100 * rows[-1]['gain_share']:5.2f} %",
              flush=True)
    rows.sort(key=lambda r: -r["alone"])
    best = next((r for r in rows if r["fits_budget"]), None)
    print(f"shipped ternary error {base_error:.5f}; budget {budget} parameters (1 % of {total_params}); "
          f"costliest linear alone within it: {best['linear'] if best else None}")
    path = write_results(args.out, {
        "prompts": args.prompts, "prompt_split": "mini-calibration", "prompt_seed": args.prompt_seed,
        "recorded_calls": recorded, "probe_records": used, "transformer_params": total_params,
        "dense_budget_params": budget, "shipped_error": base_error, "seconds": round(time.time() - t_start, 1),
        "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
