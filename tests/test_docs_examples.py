"""Every fenced block of README.md and docs/*.md, run or checked as a reader would use it.

Fence vocabulary (every fence needs an info string; an untagged or unknown one fails the test):

``python``
    Runs verbatim. A document's runnable blocks run in document order, in one namespace per document,
    in a temporary folder holding the offline fixtures (below).
``bash``
    Each command runs (``#`` comments dropped, ``\\`` continuations joined): ``torch-ternary ...`` through
    ``torch_ternary.cli.main`` (it must exit 0), ``make TARGET`` through :data:`MAKE_TARGETS`. Any other
    command fails the test: a block that cannot run here says so with a no-run marker.
``text``
    Output or illustration, not run; except its lines that start with ``$ ``: a ``torch-ternary`` command
    run with its expected one-line error (exit status 2) on the next line (``...`` ends a prefix).
    README's ``make demo`` transcript is compared with what the demo prints.
``json``
    Must parse (a block that starts with ``"`` is one member, parsed inside ``{}``). A file header
    (``format_version`` and ``ternary``) must have the keys of a real file's header; a
    ``quantization_config`` member the keys of a real ternary folder's ``config.json``.

A ``python`` / ``bash`` block that cannot run in CI starts with ``# no-run: <reason>`` (the reason is
required; no-run blocks are still parsed). A block too slow to run as written runs *shrunk*: :data:`SHRINK`
lists each exact text and its replacement, and each entry must match exactly one runnable block.

The workspace, a fresh copy for each document, holds what the examples name, built offline:
``FLUX.1-dev`` (a tiny FluxPipeline saved in bf16, with a 4-block VAE so 512x512 images stay cheap),
``my-flux-lora`` (a LoRA for its transformer), ``transformer.safetensors`` (a plain state dict) and
``broken.safetensors``. :data:`READER_OBJECTS` are the names a document uses without defining them, the
reader's own objects (README's ``pipe``: the reader's pipeline). The test prints (``-s``) and adds to
the terminal summary the count of run / shrunk / no-run blocks of every document.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
LANGS = ("python", "bash", "text", "json")
RUNNABLE = ("python", "bash")
NO_RUN = re.compile(r"^#\s*no-run\b:?(.*)$")
OPEN_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")

DOCS_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=1,
    norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035, sample_size=64,
)

#: (document, exact text of a runnable block, what runs instead, why). Each matches exactly one block.
SHRINK = [
    ("docs/calibration.md",
     "--num-prompts 1024 \\\n    --steps 5000 --out mini_ternary.safetensors",
     "--num-prompts 4 \\\n    --steps 2 --batch-size 4 --sampling-steps 2 --out mini_ternary.safetensors",
     "47 min on 2 CPU cores: 4 prompts, 2 teacher sampling steps, 2 distillation steps"),
    ("docs/calibration.md", 'load_prompts("builtin", 1024)', 'load_prompts("builtin", 4)',
     "1024 prompts: 4"),
    ("docs/calibration.md", "DistillConfig(steps=2000, batch_size=32)",
     "DistillConfig(steps=2, batch_size=4), pipe_kwargs=dict(num_inference_steps=2)",
     "2000 distillation steps: 2, and 2 teacher sampling steps"),
]


def _reader_flux_pipeline(workspace: Path):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(workspace / "FLUX.1-dev", torch_dtype=torch.bfloat16)


def _reader_mini_pipeline(workspace: Path):
    from torch_ternary.mini import load_pipeline

    return load_pipeline()


def _reader_model(workspace: Path):
    from torch_ternary.testing.flux import FLUX_TINY_CONFIG, build_flux

    return build_flux(FLUX_TINY_CONFIG)


#: document -> {name: (what it stands for, builder(workspace))}: the reader's objects a document uses.
READER_OBJECTS = {
    "README.md": {"pipe": ("the reader's pipeline: FLUX.1-dev (tiny), bf16", _reader_flux_pipeline)},
    "docs/calibration.md": {"pipe": ("the reader's pipeline: Mini FLUX", _reader_mini_pipeline)},
    "docs/quantization.md": {"model": ("the reader's model: a tiny FLUX transformer", _reader_model)},
}


# ---------------------------------------------------------------------------------------------- parsing
@dataclass
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    info: str
    code: str
    no_run: str | None = None  # the reason, for a no-run block
    shrunk: list[str] = field(default_factory=list)  # why, one per SHRINK entry applied

    @property
    def lang(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def parse_fences(text: str, doc: str) -> list[Block]:
    """Fenced blocks (indented ones too: list items), their info strings and their code, unindented."""
    lines, blocks, i = text.split("\n"), [], 0
    while i < len(lines):
        m = OPEN_FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        close = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body, j = [], i + 1
        while j < len(lines) and not close.match(lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        assert j < len(lines), f"{doc}:{i + 1}: unclosed fence"
        blocks.append(Block(doc, i + 1, m["info"].strip(), "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def doc_blocks(doc: str) -> list[Block]:
    """The blocks of ``doc``, with their no-run reasons and :data:`SHRINK` replacements applied."""
    blocks = parse_fences((ROOT / doc).read_text(), doc)
    for b in blocks:
        first = b.code.split("\n", 1)[0].strip()
        m = NO_RUN.match(first)
        if m and b.lang in RUNNABLE:
            b.no_run = m.group(1).strip()
    for entry_doc, old, new, why in SHRINK:
        if entry_doc != doc:
            continue
        hits = [b for b in blocks if b.lang in RUNNABLE and b.no_run is None and old in b.code]
        assert len(hits) == 1, f"SHRINK entry {old!r} matches {len(hits)} runnable blocks of {doc}"
        assert hits[0].code.count(old) == 1, f"SHRINK entry {old!r} occurs twice in {hits[0].where}"
        hits[0].code = hits[0].code.replace(old, new)
        hits[0].shrunk.append(why)
    return blocks


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuations joined, comments and blank lines dropped."""
    return [argv for line in code.replace("\\\n", " ").splitlines() if (argv := shlex.split(line, comments=True))]


# ---------------------------------------------------------------------------------------------- vocabulary
def test_every_fence_has_a_known_info_string_and_valid_markers():
    problems, seen = [], 0
    for doc in DOCS:
        for b in doc_blocks(doc):
            seen += 1
            if b.lang not in LANGS:
                problems.append(f"{b.where}: info string {b.info!r} (use one of {', '.join(LANGS)})")
                continue
            lines = b.code.splitlines()
            for k, line in enumerate(lines):
                if "no-run" in line and not (k == 0 and NO_RUN.match(line.strip()) and b.lang in RUNNABLE):
                    problems.append(f"{b.where}: a no-run marker goes on the first line of a python or bash block")
            if b.no_run is not None and not b.no_run:
                problems.append(f"{b.where}: no-run marker without a reason")
            if b.no_run is not None:  # not run, but still well-formed
                try:
                    compile(b.code, b.where, "exec") if b.lang == "python" else commands(b.code)
                except (SyntaxError, ValueError) as e:
                    problems.append(f"{b.where}: no-run block does not parse: {e}")
    fences = sum(1 for doc in DOCS for line in (ROOT / doc).read_text().splitlines() if OPEN_FENCE.match(line))
    assert seen == fences // 2 and seen >= 40, (seen, fences)  # every fence pair found
    assert not problems, "\n".join(problems)


def test_the_vocabulary_is_enforced():
    """The checks above can fail: an untagged fence, an unclosed one, a marker without a reason."""
    blocks = parse_fences("a\n```\nx = 1\n```\n  ```json\n  {\"a\": 1}\n  ```\n```python\n# no-run:\npass\n```\n", "t.md")
    assert [(b.line, b.lang, b.code) for b in blocks] == [(2, "", "x = 1\n"), (5, "json", '{"a": 1}\n'),
                                                          (8, "python", "# no-run:\npass\n")]
    with pytest.raises(AssertionError, match="unclosed fence"):
        parse_fences("```python\nx = 1\n", "t.md")
    assert NO_RUN.match("# no-run:").group(1).strip() == ""
    assert commands("torch-ternary info a \\\n  --json   # c\n\n# only a comment\nmake demo\n") == [
        ["torch-ternary", "info", "a", "--json"], ["make", "demo"]]


def test_shrink_table_and_reader_objects_match_the_docs():
    for doc, *_ in SHRINK:
        assert any(b.shrunk for b in doc_blocks(doc))  # doc_blocks asserts each entry matches one block
    for doc, names in READER_OBJECTS.items():
        code = "".join(b.code for b in doc_blocks(doc) if b.lang == "python" and b.no_run is None)
        for name in names:
            first = re.search(rf"\b{name}\b", code)
            assert first, f"{doc} never uses {name}: drop it from READER_OBJECTS"
            assert not re.search(rf"^{name}\s*=", code[:first.start()], re.M)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def template(tmp_path_factory):
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from torch_ternary.testing.pipelines import build_flux_pipeline

    root = tmp_path_factory.mktemp("docs")
    pipe = build_flux_pipeline(vae_config=DOCS_VAE, t5_max_length=512, dtype=torch.bfloat16)
    pipe.save_pretrained(root / "FLUX.1-dev")
    save_file({k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}, root / "transformer.safetensors")
    (root / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    lora_src = build_flux_pipeline(seed=1).transformer
    lora_src.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    FluxPipeline.save_lora_weights(root / "my-flux-lora", transformer_lora_layers=get_peft_model_state_dict(lora_src))
    return root


@pytest.fixture
def workspace(template, tmp_path, monkeypatch):
    """A fresh copy of the template folder for each document, the current folder while it runs."""
    shutil.copytree(template, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "work"


# ---------------------------------------------------------------------------------------------- make
def make_recipe(target: str) -> str:
    """The one-line recipe of a Makefile target."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:[^\n]*\n\t([^\n]+)", text, re.M)
    assert m, f"Makefile has no one-line recipe for {target}"
    return m.group(1).strip()


#: ``make demo`` runs once per session: README's Quick start and its transcript test share it.
_DEMO_RUNS: dict = {}


@dataclass
class DemoRun:
    stdout: str
    folder: Path


def run_make_demo(tmp_path_factory) -> DemoRun:
    """``make demo``: its recipe, ``python -m torch_ternary.demo ARGS``, as ``torch_ternary.demo.main(ARGS)``
    in a fresh folder (the demo writes its PNG in the current folder)."""
    recipe = make_recipe("demo")
    m = re.fullmatch(r"HF_HUB_OFFLINE=1 \$\(BIN\)/python -m torch_ternary\.demo(.*)", recipe)
    assert m, f"make demo runs {recipe!r}, not python -m torch_ternary.demo"
    args = shlex.split(m.group(1))
    if tuple(args) not in _DEMO_RUNS:
        import os

        from torch_ternary import demo

        folder = tmp_path_factory.mktemp("make_demo")
        out, cwd = io.StringIO(), os.getcwd()
        os.chdir(folder)
        try:
            with contextlib.redirect_stdout(out):
                demo.main(args)
        finally:
            os.chdir(cwd)
        _DEMO_RUNS[tuple(args)] = DemoRun(out.getvalue(), folder)
        print(out.getvalue(), end="")
    return _DEMO_RUNS[tuple(args)]


def check_make_test(tmp_path_factory) -> None:
    """``make test`` is this test suite: not run from inside it. CI runs it (``.ci/run``), and its recipe
    runs pytest over ``tests``."""
    assert re.fullmatch(r"HF_HUB_OFFLINE=1 \$\(BIN\)/python -m pytest .*\btests", make_recipe("test"))
    assert "make test" in [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]


#: make target -> (how the docs test stands in for it, what it does)
MAKE_TARGETS = {
    "demo": (run_make_demo, "make demo -> torch_ternary.demo.main(<the Makefile's args>) in a fresh folder"),
    "test": (check_make_test, "make test -> not run (it is this suite; CI's .ci/run runs it), its recipe checked"),
}


# ---------------------------------------------------------------------------------------------- running
def run_bash(block: Block, capsys, tmp_path_factory) -> None:
    from torch_ternary.cli import main

    for argv in commands(block.code):
        if argv[0] == "torch-ternary":
            rc = main(argv[1:])
            assert rc == 0, f"{block.where}: {shlex.join(argv)} exited {rc}\n{capsys.readouterr().err}"
        elif argv[0] == "make" and len(argv) > 1 and all(t in MAKE_TARGETS for t in argv[1:]):
            for target in argv[1:]:
                MAKE_TARGETS[target][0](tmp_path_factory)
        else:
            pytest.fail(f"{block.where}: the docs runner cannot run {shlex.join(argv)!r}: "
                        "mark the block '# no-run: <reason>' or teach the runner")


def run_text_commands(block: Block, capsys) -> int:
    """The ``$ torch-ternary ...`` lines of a text block: exit 2 with the line below as the stderr prefix."""
    from torch_ternary.cli import main

    lines, ran = block.code.strip().splitlines(), 0
    for i, line in enumerate(lines):
        if not line.startswith("$ "):
            continue
        argv = shlex.split(line[2:])
        assert argv[0] == "torch-ternary", f"{block.where}: {line}"
        capsys.readouterr()
        assert main(argv[1:]) == 2, f"{block.where}: {line}"
        err = capsys.readouterr().err.strip()
        expected = lines[i + 1].split("...")[0].strip()
        assert err.startswith(expected), (block.where, line, err, expected)
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        ran += 1
    return ran


def classify(block: Block) -> str:
    if block.no_run is not None:
        return "no-run"
    if block.shrunk:
        return "shrunk"
    if block.lang == "bash" and any(argv[0] == "make" for argv in commands(block.code)):
        return "shrunk"  # stood in for by MAKE_TARGETS
    if block.lang in RUNNABLE or (block.lang == "text" and re.search(r"^\$ ", block.code, re.M)):
        return "run"
    return block.lang  # text / json: checked, not run


def why(block: Block) -> str:
    """What a shrunk block runs instead, or why a block does not run."""
    if block.no_run is not None:
        return block.no_run
    makes = [MAKE_TARGETS[t][1] for argv in commands(block.code) if argv[0] == "make" for t in argv[1:] if t in MAKE_TARGETS]
    return "; ".join(block.shrunk + makes)


SUMMARY: dict[str, dict] = {}


class _SummaryPlugin:
    def pytest_terminal_summary(self, terminalreporter):
        if SUMMARY:
            terminalreporter.section("docs examples (tests/test_docs_examples.py)")
            for doc in DOCS:
                if doc in SUMMARY:
                    terminalreporter.write_line(summary_line(doc, SUMMARY[doc]))


def summary_line(doc: str, counts: dict) -> str:
    text = (f"{doc}: run {len(counts['run'])}, shrunk {len(counts['shrunk'])}, no-run {len(counts['no-run'])}; "
            f"not code: text {len(counts['text'])}, json {len(counts['json'])}")
    details = [f"shrunk {w}" for w in counts["shrunk"]] + [f"no-run {w}" for w in counts["no-run"]]
    return text + "".join(f"\n    {d}" for d in details)


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("docs-examples-summary"):
        manager.register(_SummaryPlugin(), "docs-examples-summary")


def _expect_readme(ns, workspace, reader):
    from torch_ternary import TernaryTensor

    original = getattr(reader["pipe"].transformer, "_orig_mod", reader["pipe"].transformer)
    assert isinstance(reader["pipe"].transformer, torch._dynamo.eval_frame.OptimizedModule)
    loaded = ns["fresh"].state_dict()
    ref = original.state_dict()
    assert loaded.keys() == ref.keys()
    assert any(isinstance(v, TernaryTensor) for v in loaded.values())
    for k, v in ref.items():
        assert type(loaded[k]) is type(v) and torch.equal(loaded[k], v), k
    assert (workspace / "fox.png").is_file() and (workspace / "flux-ternary" / "model_index.json").is_file()


def _expect_diffusers(ns, workspace, reader):
    out = ns["__stdout__"]
    assert "TernaryTensor(shape=" in out and "torch.bfloat16 TernaryTensor" in out and "kept unfused:" in out
    assert (workspace / "fox.png").is_file() and (workspace / "FLUX.1-dev-ternary-2bit" / "model_index.json").is_file()
    assert ns["pipe"].transformer.hf_quantizer.quantization_config.quant_method == "torch_ternary"


def _expect_cli(ns, workspace, reader):
    for name in ("fox.png", "transformer-ternary.safetensors", "mini-gptq.safetensors", "mini-gptq.json", "demo.png"):
        assert (workspace / name).is_file(), name
    assert "bit-exact=True" in ns["__stdout__"]  # demo --flux ran the FLUX-architecture check


def _expect_calibration(ns, workspace, reader):
    from torch_ternary import TernaryTensor

    assert (workspace / "mini_ternary.safetensors").is_file() and (workspace / "mini_ternary.json").is_file()
    assert isinstance(ns["pipe"].transformer.transformer_blocks[0].attn.to_q.weight, TernaryTensor)


def _expect_quantization(ns, workspace, reader):
    assert ns["report"].layers_converted


def _expect_mini(ns, workspace, reader):
    assert ns["evaluate"](ns["image"], ns["text"]) and not ns["evaluate"](ns["image"], "a blue square")


#: document -> checks after all its blocks ran (what the examples claim they produce)
EXPECT = {"README.md": _expect_readme, "docs/diffusers.md": _expect_diffusers, "docs/cli.md": _expect_cli,
          "docs/calibration.md": _expect_calibration, "docs/quantization.md": _expect_quantization,
          "docs/mini.md": _expect_mini}


@pytest.mark.parametrize("doc", DOCS)
def test_doc_examples(doc, workspace, capsys, tmp_path_factory):
    """Every runnable block of ``doc``, in order, in one namespace; text blocks' ``$`` commands too."""
    import torch._dynamo

    blocks = doc_blocks(doc)
    counts = {k: [] for k in ("run", "shrunk", "no-run", "text", "json")}
    for b in blocks:
        kind = classify(b)
        counts[kind].append(f"{b.where}: {why(b)}" if kind in ("shrunk", "no-run") else b.where)
    reader = {name: build(workspace) for name, (_, build) in READER_OBJECTS.get(doc, {}).items()}
    ns: dict = {"__name__": "__docs__", **reader}
    stdout, seconds = [], {}
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):  # compile examples must not recompile
            for b in blocks:
                if classify(b) not in ("run", "shrunk"):
                    continue
                t0 = time.perf_counter()
                if b.lang == "python":
                    exec(compile(b.code, f"{b.where} [python block]", "exec"), ns)
                elif b.lang == "bash":
                    run_bash(b, capsys, tmp_path_factory)
                else:
                    run_text_commands(b, capsys)
                stdout.append(capsys.readouterr().out)
                seconds[b.where] = time.perf_counter() - t0
    finally:
        torch._dynamo.reset()
    ns["__stdout__"] = "".join(stdout)
    if doc in EXPECT:
        EXPECT[doc](ns, workspace, reader)
    SUMMARY[doc] = counts
    with capsys.disabled():
        print("\n" + summary_line(doc, counts))
        if seconds:
            print("    seconds: " + ", ".join(f"{w.split(':')[1]}: {t:.1f}" for w, t in seconds.items()))
    if doc in ("README.md", "docs/diffusers.md", "docs/cli.md", "docs/calibration.md"):
        assert counts["run"] or counts["shrunk"], f"nothing of {doc} ran"


# ---------------------------------------------------------------------------------------------- json
@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    """A ternary file's header and a ternary folder's ``quantization_config``, as written now."""
    from torch_ternary import TernaryConfig, quantize_, save_quantized
    from torch_ternary.format import read_header, save_quantized_folder
    from torch_ternary.testing.flux import FLUX_TINY_CONFIG, build_flux

    root = tmp_path_factory.mktemp("json")
    model = build_flux(FLUX_TINY_CONFIG, dtype=torch.bfloat16)
    quantize_(model, TernaryConfig())
    header = read_header(save_quantized(model, root / "t.safetensors"))
    save_quantized_folder(model, root / "folder")
    config = json.loads((root / "folder" / "config.json").read_text())
    return header, config["quantization_config"]


def parse_json_block(block: Block):
    text = block.code.strip()
    return json.loads("{" + text + "}" if text.startswith('"') else text)


def test_json_blocks_parse_and_match_real_files(real_files):
    header, qconfig = real_files
    checked = {"header": 0, "quantization_config": 0}
    for doc in DOCS:
        for b in doc_blocks(doc):
            if b.lang != "json":
                continue
            try:
                data = parse_json_block(b)
            except json.JSONDecodeError as e:
                pytest.fail(f"{b.where}: not JSON: {e}")
            if isinstance(data, dict) and {"format_version", "ternary"} <= data.keys():
                assert data.keys() == header.keys(), (b.where, sorted(data.keys() ^ header.keys()))
                for key in ("architecture", "config"):
                    assert data[key].keys() == header[key].keys(), (b.where, key, sorted(data[key].keys() ^ header[key].keys()))
                real_entry = next(iter(header["ternary"].values()))
                for name, entry in data["ternary"].items():
                    assert entry.keys() == real_entry.keys(), (b.where, name, sorted(entry.keys() ^ real_entry.keys()))
                for key in ("format_version", "codec", "layout"):
                    assert data[key] == header[key], (b.where, key)
                checked["header"] += 1
            if isinstance(data, dict) and "quantization_config" in data:
                shown = data["quantization_config"]
                assert shown.keys() == qconfig.keys(), (b.where, sorted(shown.keys() ^ qconfig.keys()))
                assert shown["quant_method"] == qconfig["quant_method"] and shown["format_version"] == qconfig["format_version"]
                checked["quantization_config"] += 1
    assert checked == {"header": 1, "quantization_config": 1}, checked


# ---------------------------------------------------------------------------------------------- README transcript
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def transcript_block() -> Block:
    text = (ROOT / "README.md").read_text()
    for b in doc_blocks("README.md"):
        before = [line for line in text.split("\n")[:b.line - 1] if line.strip()]
        if b.lang == "text" and "`make demo` on this" in before[-1]:
            return b
    pytest.fail("README.md has no text block after '`make demo` on this ...'")


def line_pattern(line: str) -> re.Pattern:
    """A transcript line as a pattern: numbers stand for any number, ``...`` for anything, spacing is free."""
    out = []
    for part in re.split(r"(\.\.\.|\d+(?:[.,]\d+)*|\s+)", line.strip()):
        if part == "...":
            out.append(".*")
        elif NUMBER.fullmatch(part or "x"):
            out.append(r"\d+(?:[.,]\d+)*")
        elif part.isspace():
            out.append(r"\s+")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def test_line_pattern_is_strict_about_words():
    p = line_pattern("  full precision           12/12 correct  (2.5 s)")
    assert p.fullmatch("full precision 11/12 correct (3.6 s)")
    assert not p.fullmatch("full precision 11/12 wrong (3.6 s)")
    assert line_pattern("wrote demo_mini_flux.png (columns: a, b; ...)").fullmatch("wrote demo_mini_flux.png (columns: a, b; rows: x)")


def test_readme_demo_transcript_matches_the_demo(tmp_path_factory):
    """Every line ``make demo`` prints has its counterpart in README's transcript, in order, and vice
    versa (numbers and timings aside); the size lines, computed from shapes, match exactly. The PNG it
    writes has its column and row labels."""
    import numpy as np
    from PIL import Image

    from torch_ternary import demo

    run = run_make_demo(tmp_path_factory)
    printed = run.stdout.rstrip("\n").split("\n")
    shown = transcript_block().code.rstrip("\n").split("\n")
    for i in range(max(len(printed), len(shown))):
        got = printed[i] if i < len(printed) else "<nothing>"
        want = shown[i] if i < len(shown) else "<nothing>"
        assert line_pattern(want).fullmatch(got.strip()), f"line {i + 1}: the demo printed\n  {got!r}\nREADME shows\n  {want!r}"
    for prefix in ("transformer:", "bf16 ", "6 held-out prompts"):
        assert [x for x in printed if x.startswith(prefix)] == [x for x in shown if x.startswith(prefix)], prefix

    png = np.asarray(Image.open(run.folder / demo.DEFAULT_OUT).convert("RGB"))
    names = ["full precision", "ternary absmean (PTQ)", "ternary calibrated"]
    top, left = demo.label_margins(names, list(demo.DEMO_PROMPTS))
    block = len(demo.DEMO_SEEDS) * demo.CELL * demo.SCALE
    assert png.shape[0] == top + len(demo.DEMO_PROMPTS) * demo.CELL * demo.SCALE
    strips = [png[:top, left + c * (block + demo.GAP * demo.SCALE):][:, :block] for c in range(len(names))]
    assert all((s != demo.BACKGROUND).any(axis=-1).sum() > 100 for s in strips)
    assert len({s.tobytes() for s in strips}) == len(names)
    rows = [png[top + r * demo.CELL * demo.SCALE:top + (r + 1) * demo.CELL * demo.SCALE, :left]
            for r in range(len(demo.DEMO_PROMPTS))]
    assert all((r != demo.BACKGROUND).any(axis=-1).sum() > 100 for r in rows)
