"""The demo's side-by-side PNG (``torch_ternary.demo.labelled_png``): labels a reader can see without the console.

The full demo run (``make demo``) is checked by ``tests/test_docs_examples.py`` (README's Quick start and
its transcript), which also opens the PNG it writes.
"""

import numpy as np
import pytest

pytest.importorskip("PIL")

from torch_ternary import demo  # noqa: E402

NAMES = ["full precision", "ternary absmean (PTQ)", "ternary calibrated"]
PROMPTS = ["a triangle", "a red circle to the left of a blue square", "three green circles"]
N_SEEDS = 2


def synthetic_columns(n_models=3, n_prompts=3, n_seeds=N_SEEDS):
    """One image list per model; every image a distinct flat colour, so cells can be found in the PNG."""
    rng = np.random.default_rng(0)
    colours = rng.integers(60, 256, size=(n_models, n_prompts * n_seeds, 3), dtype=np.uint8)
    return [np.broadcast_to(colours[m][:, None, None, :], (n_prompts * n_seeds, 32, 32, 3)).copy()
            for m in range(n_models)], colours


def geometry(names=NAMES, prompts=PROMPTS):
    top, left = demo.label_margins(names, prompts)
    block = N_SEEDS * demo.CELL * demo.SCALE
    return top, left, block


def test_png_keeps_every_image_upscaled_at_its_place():
    columns, colours = synthetic_columns()
    image = np.asarray(demo.labelled_png(columns, NAMES, PROMPTS, N_SEEDS))
    top, left, block = geometry()
    grid_w = len(NAMES) * (block + demo.GAP * demo.SCALE) - demo.GAP * demo.SCALE
    assert image.shape == (top + len(PROMPTS) * demo.CELL * demo.SCALE, left + grid_w, 3)
    s = demo.SCALE
    for m in range(len(NAMES)):
        for i in range(len(PROMPTS) * N_SEEDS):
            p, seed = divmod(i, N_SEEDS)
            y = top + (p * demo.CELL + 1) * s
            x = left + m * (block + demo.GAP * s) + (seed * demo.CELL + 1) * s
            assert (image[y:y + 32 * s, x:x + 32 * s] == colours[m, i]).all(), (m, i)  # labels cover no image


def test_every_column_block_has_its_own_name_label():
    columns, _ = synthetic_columns()
    image = np.asarray(demo.labelled_png(columns, NAMES, PROMPTS, N_SEEDS))
    top, left, block = geometry()
    strips = [image[:top, left + c * (block + demo.GAP * demo.SCALE):][:, :block] for c in range(len(NAMES))]
    for c, strip in enumerate(strips):
        text = (strip != demo.BACKGROUND).any(axis=-1)
        assert text.sum() > 100, f"no label above column {c}"  # drawn text, not background
        assert (strip == demo.LABEL_COLOR).all(axis=-1).sum() > 20  # in the label colour
    assert len({s.tobytes() for s in strips}) == len(NAMES), "column labels are not distinct"
    # the label strip above the gaps between blocks stays empty: each label sits over its own block
    gap = image[:top, left + block:left + block + demo.GAP * demo.SCALE]
    assert (gap == demo.BACKGROUND).all()


def test_every_row_has_its_prompt_label():
    columns, _ = synthetic_columns()
    image = np.asarray(demo.labelled_png(columns, NAMES, PROMPTS, N_SEEDS))
    top, left, _ = geometry()
    row_h = demo.CELL * demo.SCALE
    strips = [image[top + r * row_h:top + (r + 1) * row_h, :left] for r in range(len(PROMPTS))]
    inked = [(s != demo.BACKGROUND).any(axis=-1).sum() for s in strips]
    assert all(n > 100 for n in inked), inked
    assert len({s.tobytes() for s in strips}) == len(PROMPTS)
    # the longest prompt takes the most ink: the labels are the prompts, in row order
    assert int(np.argmax(inked)) == PROMPTS.index(max(PROMPTS, key=len))
    assert (image[:top, :left] == demo.BACKGROUND).all()  # the corner stays empty


def test_labels_follow_the_names():
    columns, _ = synthetic_columns()
    a = np.asarray(demo.labelled_png(columns, NAMES, PROMPTS, N_SEEDS))
    b = np.asarray(demo.labelled_png(columns, ["x", "y", "z"], PROMPTS, N_SEEDS))
    top, _, _ = geometry()
    assert a.shape == b.shape and np.array_equal(a[top:], b[top:])  # same images and row labels
    assert not np.array_equal(a[:top], b[:top])  # other names, other label pixels
    with pytest.raises(ValueError, match="3 image columns but 2 names"):
        demo.labelled_png(columns, NAMES[:2], PROMPTS, N_SEEDS)
