"""Distillation data for text encoders (BERT-like ``transformers`` models): the teacher's token states on text.

Used to calibrate ternary versions of models that are not FLUX, e.g. the sentence encoder
all-MiniLM-L6-v2: the student is trained (:func:`~.distill.distill`) to reproduce the
full-precision model's last hidden states on calibration sentences. Text only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class EncoderDistillData:
    """Teacher last hidden states for a fixed list of texts, served as distillation batches.

    Args:
        teacher: a ``transformers`` encoder (``model(input_ids, attention_mask)[0]`` is ``[B, T, D]``).
        tokenizer: its tokenizer.
        texts: calibration texts.
        max_length: token limit (texts are padded to the longest in the set, at most this).
        batch_size: texts per teacher forward while precomputing.
    """

    def __init__(self, teacher: nn.Module, tokenizer, texts: list[str], max_length: int = 64, batch_size: int = 64):
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        device = next(teacher.parameters()).device
        self.input_ids = enc["input_ids"].to(device)
        self.attention_mask = enc["attention_mask"].to(device)
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                outs.append(teacher(input_ids=self.input_ids[i:i + batch_size],
                                    attention_mask=self.attention_mask[i:i + batch_size])[0])
        self.targets = torch.cat(outs) * self.attention_mask[..., None]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    #: The kwargs of :meth:`batch` with one row per record.
    PER_RECORD = ("input_ids", "attention_mask")

    def batch(self, size: int, rng: np.random.Generator) -> tuple[dict, torch.Tensor]:
        """``(model kwargs, teacher states masked to real tokens)`` for ``size`` random texts."""
        rows = torch.from_numpy(rng.choice(len(self), size=min(size, len(self)), replace=False)).to(self.input_ids.device)
        return {"input_ids": self.input_ids[rows], "attention_mask": self.attention_mask[rows]}, self.targets[rows]

    def iterate(self, size: int):
        for i in range(0, len(self), size):
            yield {"input_ids": self.input_ids[i:i + size], "attention_mask": self.attention_mask[i:i + size]}, \
                self.targets[i:i + size]


def mean_pooled(model: nn.Module, tokenizer, texts: list[str], max_length: int = 64) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers computes them: mean over real tokens, L2-normalized.

    Returns:
        float32 ``[len(texts), D]``.
    """
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    device = next(model.parameters()).device
    with torch.no_grad():
        states = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device))[0]
    mask = enc["attention_mask"].to(device)[..., None].to(states.dtype)
    emb = (states * mask).sum(1) / mask.sum(1).clamp_min(1)
    return torch.nn.functional.normalize(emb.float(), dim=-1)
