"""Calibration of a module tree that is not FLUX: a (tiny, random) BERT sentence encoder, from text alone."""

import copy

import torch
from transformers import BertConfig, BertModel

from torch_ternary import TernaryConfig, TernaryTensor, quantize_
from torch_ternary.calibration import DistillConfig
from torch_ternary.calibration.distill import distill
from torch_ternary.calibration.encoder_data import EncoderDistillData, mean_pooled
from torch_ternary.calibration.layerwise import layerwise_calibrate
from torch_ternary.calibration.prompts import mini_prompts
from torch_ternary.calibration.trainable import export_ternary, make_trainable
from torch_ternary.mini.text import build_tokenizer, vocabulary


def test_layerwise_and_distillation_beat_ptq_on_a_bert_encoder():
    torch.manual_seed(0)
    tok = build_tokenizer(with_bos=True, max_length=16)
    teacher = BertModel(BertConfig(vocab_size=len(vocabulary()), hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=128, max_position_embeddings=32,
                                   initializer_range=0.2),  # large enough weights that ternarization hurts
                        add_pooling_layer=False).eval()
    calib, evals = mini_prompts(128, seed=1), mini_prompts(64, seed=2)
    ref = mean_pooled(teacher, tok, evals)

    def cosine(model):
        return float((mean_pooled(model, tok, evals) * ref).sum(-1).mean())

    ptq = copy.deepcopy(teacher)
    report = quantize_(ptq, TernaryConfig())
    assert len(report.layers_converted) == 12  # q, k, v, o, intermediate, output x 2 layers
    data = EncoderDistillData(teacher, tok, calib)

    student = copy.deepcopy(ptq)
    layerwise_calibrate(student, teacher, lambda m: [m(**kw) for kw, _ in data.iterate(32)], gptq=True)
    cos_ptq, cos_lw = cosine(ptq), cosine(student)

    for p in student.parameters():
        p.requires_grad_(False)
    make_trainable(student, latent_from=teacher)
    losses = distill(student, data, DistillConfig(steps=150, batch_size=32, lr=1e-3, scale_lr=1e-3, warmup=10,
                                                   checkpoint_every=0))
    export_ternary(student)
    cos_qat = cosine(student)
    assert all(isinstance(m.weight, TernaryTensor) for n, m in student.named_modules() if n.endswith(("query", "dense")))
    assert losses[-1] < losses[0]
    # measured (with bias correction): see the assertion message on failure
    assert cos_ptq < 0.7 and cos_lw > cos_ptq + 0.2 and cos_qat > cos_lw, (cos_ptq, cos_lw, cos_qat)
