import json

import pytest

from torch_ternary.calibration.prompts import (
    CATEGORIES,
    PromptSourceError,
    builtin_prompts,
    compositional_prompt,
    load_prompts,
    prompts_from_file,
)


def test_builtin_prompts_deterministic_distinct_and_compositional():
    a, b = builtin_prompts(70, seed=3), builtin_prompts(70, seed=3)
    assert a == b and len(set(a)) == 70
    assert builtin_prompts(70, seed=4) != a
    assert any(" and " in p for p in a) and any("on the left of" in p or "below" in p or "behind" in p for p in a)
    assert any(p.split()[0] in ("two", "three", "four", "five") for p in a)


def test_every_category_and_unknown():
    import numpy as np

    rng = np.random.default_rng(0)
    for c in CATEGORIES:
        assert compositional_prompt(c, rng)
    with pytest.raises(PromptSourceError):
        compositional_prompt("style", rng)


def test_mini_prompts_hold_out_compositional_evaluation_prompts():
    from torch_ternary.mini import evaluation_prompts, is_held_out

    prompts = load_prompts("mini", 500)
    assert len(prompts) == 500 and not any(is_held_out(p) for p in prompts)
    compositional = {p for p in evaluation_prompts() if is_held_out(p)}
    assert len(compositional) == 42 and not set(prompts) & compositional


def test_files(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n a dog \n")
    assert prompts_from_file(tmp_path / "p.txt") == ["a cat", "a dog"]
    (tmp_path / "p.tsv").write_text("id\ttext\n1\ta cat\n2\ta dog\n")
    assert prompts_from_file(tmp_path / "p.tsv", column="text") == ["a cat", "a dog"]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"caption": c}) for c in ["x", "y"]))
    assert load_prompts(str(tmp_path / "p.jsonl"), n=1, column="caption") == ["x"]


@pytest.mark.parametrize(
    "name,content,column,match",
    [("missing.txt", None, None, "not found"), ("p.csv", "a,b", None, "unsupported"), ("e.txt", "\n\n", None, "no prompts"),
     ("p.tsv", "id\tprompt\n1\n", None, "line 2"), ("p.tsv", "id\tx\n1\ta\n", "text", "no column"),
     ("p.jsonl", "{bad json\n", None, "not JSON"), ("p.jsonl", '{"prompt": 3}\n', None, "no string field")],
)
def test_bad_files(tmp_path, name, content, column, match):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(PromptSourceError, match=match):
        prompts_from_file(tmp_path / name, column)


def test_binary_file(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00\x80")
    with pytest.raises(PromptSourceError, match="UTF-8"):
        prompts_from_file(tmp_path / "b.txt")
