"""Mini FLUX's text side: word-level tokenizers and tiny CLIP / T5 encoders, all built offline.

FLUX conditions on two encoders: CLIP's pooled output (to the AdaLN modulation, through
``pooled_projections``) and T5's token sequence (joint attention, through ``encoder_hidden_states``).
Mini FLUX keeps that structure with tiny ``CLIPTextModel`` and ``T5EncoderModel`` instances trained
from scratch together with the transformer. The tokenizers are ``PreTrainedTokenizerFast`` objects
over a fixed word-level vocabulary (the caption grammar's words), so nothing is downloaded.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)

#: Every word the caption grammar can produce (order fixes the token ids: never reorder, only append).
WORDS = (
    "a", "an", "and", "to", "the", "of", "left", "right", "above", "below",
    "one", "two", "three", "four",
    "red", "green", "blue", "yellow",
    "circle", "circles", "square", "squares", "triangle", "triangles", ".",
)

#: Tokens per prompt (the longest caption, "a yellow triangle to the right of a green square", is 10 words + EOS).
MAX_TOKENS = 12

T5_CONFIG = dict(d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, dropout_rate=0.0, feed_forward_proj="gated-gelu")
CLIP_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   max_position_embeddings=MAX_TOKENS + 1, projection_dim=64, hidden_act="gelu")


def tokenize(tokenizer: PreTrainedTokenizerFast, captions: list[str], max_length: int = MAX_TOKENS) -> torch.Tensor:
    """int64 ``[len(captions), max_length]`` token ids, padded (and truncated) to ``max_length``."""
    return tokenizer(captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids


def vocabulary() -> dict[str, int]:
    """Token -> id: the four special tokens, then :data:`WORDS`."""
    return {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *WORDS))}


def build_tokenizer(with_bos: bool, max_length: int = MAX_TOKENS) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer that appends ``[EOS]`` (and prepends ``[BOS]`` if ``with_bos``)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = vocabulary()
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    single = f"{BOS} $A {EOS}" if with_bos else f"$A {EOS}"
    specials = [(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        model_max_length=max_length, padding_side="right",
    )


def build_clip() -> CLIPTextModel:
    """Tiny CLIP text encoder; its ``pooler_output`` ([B, 64]) feeds FLUX's ``pooled_projections``."""
    vocab = vocabulary()
    cfg = CLIPTextConfig(vocab_size=len(vocab), pad_token_id=vocab[PAD], bos_token_id=vocab[BOS],
                         eos_token_id=vocab[EOS], **CLIP_CONFIG)
    return CLIPTextModel(cfg)


def build_t5() -> T5EncoderModel:
    """Tiny T5 encoder; its last hidden state ([B, T, 128]) feeds FLUX's ``encoder_hidden_states``."""
    vocab = vocabulary()
    cfg = T5Config(vocab_size=len(vocab), pad_token_id=vocab[PAD], eos_token_id=vocab[EOS],
                   decoder_start_token_id=vocab[PAD], **T5_CONFIG)
    return T5EncoderModel(cfg)
