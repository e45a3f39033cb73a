"""A training-only auxiliary loss that makes the tiny T5 encoder bind words to their objects.

Why. ``FluxPipeline`` gives text tokens position ids of zero (as real FLUX does), so the transformer
sees the T5 token states as an unordered set: whatever word order means has to be inside the states
themselves. Real FLUX gets that from a pretrained T5-XXL. Mini FLUX's T5 is trained from scratch by
the diffusion loss alone, and after 22,500 steps it had learned none of it: the state of "red" was
the same (cosine 1.000) in "a red circle and a blue square" and in "a red square and a blue
circle", and so was every state of "a red circle above a blue square" against "a blue square above
a red circle" — for the transformer these were one prompt, so colour attribution and position were
coin flips even when both objects were drawn right.

What. Small linear heads read every colour word and shape word of the T5 output and predict the
object that word belongs to: its shape (3 classes), its colour (none or one of 4) and its side in
the caption's relation (none, left, right, above, below). A bag-of-words encoder cannot solve this;
an encoder that routes information along the word order (T5's relative attention) can. The loss is
added to the diffusion loss during training only (``--binding-loss``); the heads are not part of the
pipeline and are never shipped, so the inference path stays plain diffusers ``FluxPipeline``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .grammar import CaptionError, caption, evaluation_prompts, parse, sample_training_caption
from .text import MAX_TOKENS, tokenize
from .world import COLORS, SHAPES, Description, Request

#: Classes of the "side" target: the object's place in the caption's relation.
SIDES: tuple[str | None, ...] = (None, "left", "right", "above", "below")
#: Relation -> (side of the first object, side of the second).
_RELATION_SIDES: dict[str, tuple[str, str]] = {
    "left_of": ("left", "right"), "right_of": ("right", "left"), "above": ("above", "below"), "below": ("below", "above"),
}
#: Targets per token: shape, colour, side.
N_TARGETS = 3
IGNORE = -100
_PLURAL_SHAPES = tuple(s + "s" for s in SHAPES)


def binding_targets(tokens: list[list[str]]) -> torch.Tensor:
    """Per-token targets for tokenized captions.

    Args:
        tokens: one list of T5 tokens per caption (what the tokenizer produced, padding included;
            all lists the same length ``T``). A caption of only special tokens (the dropped, empty
            caption) gets no targets.

    Returns:
        int64 ``[B, T, 3]``: for every colour or shape word, (shape index in ``SHAPES``, colour index
        ``1 + COLORS.index`` or 0 for none, side index in :data:`SIDES`) of the object the word
        belongs to; :data:`IGNORE` everywhere else (articles, numbers, relation words, specials).

    Raises:
        CaptionError: a caption outside the grammar.
    """
    width = len(tokens[0]) if tokens else 0
    return torch.tensor([_caption_targets(tuple(toks)) for toks in tokens], dtype=torch.long).reshape(len(tokens), width, N_TARGETS)


def binding_targets_of_ids(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """:func:`binding_targets` of token ids: int64 ``[B, T]`` (``tokenizer``'s) -> int64 ``[B, T, 3]``."""
    return binding_targets([tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()])


@functools.lru_cache(maxsize=8192)  # the training captions are ~1,000 distinct strings: parse each once
def _caption_targets(toks: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    """:func:`binding_targets` of one tokenized caption, one ``(shape, colour, side)`` row per token."""
    rows = [(IGNORE,) * N_TARGETS] * len(toks)
    words = [t for t in toks if not (t.startswith("[") and t.endswith("]"))]
    if not words:
        return tuple(rows)
    request = parse(" ".join(words))
    sides = _RELATION_SIDES.get(request.relation, (None, None))
    obj = 0
    for i, tok in enumerate(toks):
        shape_word = tok in SHAPES or tok in _PLURAL_SHAPES
        if not shape_word and tok not in COLORS:
            continue
        if obj >= len(request.objects):
            break
        desc = request.objects[obj]
        color = 0 if desc.color is None else 1 + COLORS.index(desc.color)
        rows[i] = (SHAPES.index(desc.shape), color, SIDES.index(sides[obj]))
        if shape_word:
            obj += 1
    if obj != len(request.objects):
        raise CaptionError(f"could not align the words of {' '.join(words)!r} with its objects")
    return tuple(rows)


class BindingHeads(torch.nn.Module):
    """Linear heads from a T5 state to (shape, colour, side) logits."""

    def __init__(self, d_model: int):
        super().__init__()
        self.shape = torch.nn.Linear(d_model, len(SHAPES))
        self.color = torch.nn.Linear(d_model, 1 + len(COLORS))
        self.side = torch.nn.Linear(d_model, len(SIDES))

    def forward(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the three heads over the targeted tokens.

        Args:
            states: float ``[B, T, d_model]``, the T5 encoder's last hidden state.
            targets: int64 ``[B, T, 3]`` from :func:`binding_targets` (same ``B``, ``T``).

        Returns:
            float32 scalar (0 when no token is targeted).
        """
        if states.shape[:2] != targets.shape[:2]:
            raise ValueError(f"states {tuple(states.shape)} and targets {tuple(targets.shape)} disagree on [B, T]")
        mask = targets[..., 0] != IGNORE
        if not bool(mask.any()):
            return states.sum() * 0.0
        h, t = states[mask].float(), targets[mask]
        return (F.cross_entropy(self.shape(h), t[:, 0]) + F.cross_entropy(self.color(h), t[:, 1])
                + F.cross_entropy(self.side(h), t[:, 2])) / 3


def word_state_similarity(encoder, tokenizer, first: str, second: str, word: str, max_length: int) -> float:
    """Cosine similarity of ``word``'s T5 state in caption ``first`` and in caption ``second``
    (the word's first occurrence in each). 1.0 means the encoder ignores the word's context.
    (A diagnostic: see the module docstring.)"""
    states = []
    for text in (first, second):
        ids = tokenize(tokenizer, [text], max_length)
        toks = tokenizer.convert_ids_to_tokens(ids[0])
        if word not in toks:
            raise ValueError(f"{word!r} is not a word of {text!r}")
        with torch.no_grad():
            states.append(encoder(ids.to(encoder.device))[0][0, toks.index(word)].float())
    return float(F.cosine_similarity(states[0], states[1], dim=0))


def swap_pairs() -> dict[str, list[tuple[str, str, str]]]:
    """Caption pairs whose words are the same and whose meaning differs, from the evaluation prompts
    (pairs with two different nouns), for :func:`word_state_similarity`:
    ``{"colour_swap": [...], "order_swap": [...]}`` of ``(caption, swapped caption, noun compared)``.

    - colour swap: "a red circle and a blue square" vs "a blue circle and a red square" (the noun's
      colour changed);
    - order swap: "a red circle above a blue square" vs "a blue square above a red circle" (the noun's
      side of the relation changed).
    """
    pairs: dict[str, list[tuple[str, str, str]]] = {"colour_swap": [], "order_swap": []}
    for prompt in evaluation_prompts("color_attr") + evaluation_prompts("position"):
        request = parse(prompt)
        a, b = request.objects
        if a.shape == b.shape:
            continue
        if request.relation is None and a.color and b.color:
            swapped = Request((Description(a.shape, b.color), Description(b.shape, a.color)), 2)
            pairs["colour_swap"].append((prompt, caption(swapped), a.shape))
        elif request.relation is not None:
            swapped = Request((b, a), 2, request.relation)
            pairs["order_swap"].append((prompt, caption(swapped), a.shape))
    return pairs


def pretrain_text_encoder(t5: torch.nn.Module, heads: BindingHeads, tokenizer, steps: int, rng, *, batch: int = 64,
                          lr: float = 1e-3, max_length: int = MAX_TOKENS, category_weights: dict[str, float] | None = None) -> float:
    """Train ``t5`` and ``heads`` (in place, on their device) on the binding loss alone, on training captions.

    FLUX's T5 is pretrained on text before the image model ever sees it; this is the Mini FLUX
    analogue: text only, a few hundred steps (a fresh 2-layer T5 solves the task in ~600 steps of 64
    captions, 14 s on 2 CPU cores). Captions come from the training sampler (``rng``, a numpy
    ``Generator``), so held-out evaluation prompts are never seen. Returns the last step's loss.
    """
    device = next(t5.parameters()).device
    opt = torch.optim.AdamW([*t5.parameters(), *heads.parameters()], lr=lr, betas=(0.9, 0.99))
    t5.train()
    loss = torch.zeros(())
    for _ in range(steps):
        captions = [sample_training_caption(rng, category_weights)[1] for _ in range(batch)]
        ids = tokenize(tokenizer, captions, max_length)
        targets = binding_targets_of_ids(tokenizer, ids)
        loss = heads(t5(ids.to(device))[0], targets.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())
