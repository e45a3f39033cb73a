"""Build a diffusers ``FluxPipeline`` entirely offline, from configs, with word-level tokenizers.

Nothing here downloads anything: the CLIP and T5 text encoders, the VAE and the transformer are built
from config dicts with seeded random weights, and both tokenizers are ``PreTrainedTokenizerFast``
objects made from a ``tokenizers`` ``WordLevel`` model over a fixed vocabulary. The result behaves like
a real FLUX pipeline (same classes, same call signature, ``save_pretrained`` / ``from_pretrained``
round trip), only small. Used by the tests (``tests/test_cli.py``, ``tests/integrations/test_pipeline.py``) and
the docs examples (``tests/test_docs_examples.py``); reusable for any transformer / encoder configs::

    from torch_ternary.testing.pipelines import build_flux_pipeline
    pipe = build_flux_pipeline()                      # tiny, random weights
    image = pipe("a red cube", num_inference_steps=2, height=16, width=16).images[0]

Needs the ``diffusers`` extra (diffusers, transformers, tokenizers).
"""

from __future__ import annotations

import torch

from .flux import FLUX_TINY_CONFIG

#: A fixed word list for the word-level tokenizers (lower-case words split on whitespace/punctuation).
DEFAULT_WORDS: tuple[str, ...] = tuple(
    """a an the of and with on in at to by for from under over near
    red green blue yellow black white orange purple pink brown gray gold silver
    cat dog bird fish horse cow fox owl bear lion tiger rabbit mouse frog
    cube sphere ball box cone tree flower house car boat train plane city mountain river lake sea sky sun moon star
    cloud rain snow forest field road bridge tower castle garden room table chair lamp window door
    small big tiny huge old new bright dark shiny soft round square tall short happy sad
    photo painting drawing sketch picture image portrait landscape close up view night day morning evening
    one two three four five many
    """.split()  # noqa: SIM905
)

#: Special tokens, in vocabulary order (ids 0..4).
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>", "<|startoftext|>", "<|endoftext|>")

#: CLIP text encoder config (diffusers' tiny FLUX test sizes; vocab covers the word-level vocabulary).
CLIP_TINY_CONFIG = dict(
    hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32,
    layer_norm_eps=1e-5, hidden_act="gelu", max_position_embeddings=77,
)

#: T5 encoder config; ``d_model`` must equal the transformer's ``joint_attention_dim``.
T5_TINY_CONFIG = dict(
    d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2, relative_attention_num_buckets=8,
    dropout_rate=0.0, feed_forward_proj="relu",
)

#: AutoencoderKL config: one block (scale factor 1); ``latent_channels`` = transformer ``in_channels // 4``.
VAE_TINY_CONFIG = dict(
    in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
    norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
    scaling_factor=1.5035, sample_size=32,
)


def build_word_tokenizer(words=DEFAULT_WORDS, max_length: int = 77, style: str = "clip"):
    """A ``PreTrainedTokenizerFast`` over ``SPECIAL_TOKENS + words`` (WordLevel model, no download).

    Args:
        words: the vocabulary (unknown words map to ``<unk>``); lower-cased input is split on
            whitespace and punctuation.
        max_length: ``model_max_length`` (FLUX pads CLIP prompts to it; 77 for CLIP, 512 for T5).
        style: ``"clip"`` wraps a prompt as ``<|startoftext|> ... <|endoftext|>`` (pad = end token, as
            CLIP does); ``"t5"`` appends ``</s>`` (pad = ``<pad>``).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``; ``save_pretrained`` / ``from_pretrained`` round-trip it.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if style == "clip":
        bos, eos = "<|startoftext|>", "<|endoftext|>"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, bos_token=bos,
                                       eos_token=eos, pad_token=eos, unk_token="<unk>")
    if style == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, eos_token="</s>",
                                       pad_token="<pad>", unk_token="<unk>")
    raise ValueError(f"style must be 'clip' or 't5', got {style!r}")


def build_flux_pipeline(
    transformer=None,
    transformer_config: dict | None = None,
    clip_config: dict | None = None,
    t5_config: dict | None = None,
    vae_config: dict | None = None,
    words=DEFAULT_WORDS,
    t5_max_length: int = 32,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
):
    """A diffusers ``FluxPipeline`` built from configs, with random (seeded) weights and no download.

    Args:
        transformer: a ready ``FluxTransformer2DModel`` (e.g. ternarized, or loaded with
            ``from_pretrained``); if None, one is built from ``transformer_config``.
        transformer_config: ``FluxTransformer2DModel`` kwargs (default :data:`FLUX_TINY_CONFIG`).
        clip_config, t5_config, vae_config: ``CLIPTextConfig`` / ``T5Config`` / ``AutoencoderKL`` kwargs
            (defaults: :data:`CLIP_TINY_CONFIG`, :data:`T5_TINY_CONFIG`, :data:`VAE_TINY_CONFIG`).
            Vocabulary sizes and special-token ids are set from the tokenizers; T5's ``d_model`` and the
            CLIP ``projection_dim`` must match the transformer's ``joint_attention_dim`` /
            ``pooled_projection_dim``, and the VAE's ``latent_channels`` its ``in_channels // 4``.
        words: vocabulary of both word-level tokenizers.
        t5_max_length: ``model_max_length`` of the T5 tokenizer (FLUX's ``max_sequence_length`` must not exceed it).
        dtype: dtype of every model (the transformer passed in is left as it is).
        seed: seeds the random weights.

    Returns:
        A ``diffusers.FluxPipeline`` on CPU.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tcfg = dict(transformer_config or (transformer.config if transformer is not None else FLUX_TINY_CONFIG))
    tokenizer = build_word_tokenizer(words, max_length=77, style="clip")
    tokenizer_2 = build_word_tokenizer(words, max_length=t5_max_length, style="t5")

    vocab_size = len(tokenizer)
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # .to(dtype) on fresh models warns about fp32 modules they do not have
    try:
        torch.manual_seed(seed)
        if transformer is None:
            transformer = FluxTransformer2DModel(**tcfg).to(dtype).eval()
        clip = dict(CLIP_TINY_CONFIG if clip_config is None else clip_config)
        clip.setdefault("projection_dim", tcfg.get("pooled_projection_dim", 768))
        clip_cfg = CLIPTextConfig(vocab_size=vocab_size, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **clip)
        text_encoder = CLIPTextModel(clip_cfg).to(dtype).eval()
        t5 = dict(T5_TINY_CONFIG if t5_config is None else t5_config)
        t5_cfg = T5Config(vocab_size=vocab_size, pad_token_id=tokenizer_2.pad_token_id,
                          eos_token_id=tokenizer_2.eos_token_id, decoder_start_token_id=tokenizer_2.pad_token_id, **t5)
        text_encoder_2 = T5EncoderModel(t5_cfg).to(dtype).eval()
        vae_kwargs = dict(VAE_TINY_CONFIG if vae_config is None else vae_config)
        if vae_config is None:
            vae_kwargs["latent_channels"] = tcfg.get("in_channels", 64) // 4
        vae = AutoencoderKL(**vae_kwargs).to(dtype).eval()
    finally:
        diffusers_logging.set_verbosity(level)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                        transformer=transformer)
