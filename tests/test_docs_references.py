"""What README.md, docs/*.md and the docstrings of the package and the benchmarks point at exists.

- every dotted name ``torch_ternary.x.y`` resolves (a module, or an attribute of one), by its current
  path: the 0.1.0 paths kept by ``torch_ternary/_legacy.py`` are for old code, named only by a text
  that is about them (one that names ``_legacy``);
- every custom op ``torch_ternary::name`` is registered;
- every repo path (``benchmarks/results/flux_size.json``, ``format/packing.py``, ``tests/x.py::test_y``)
  exists, the test or function after ``::`` too; in the docs, every results file named bare
  (``quality_mini_v3.json``) is in ``benchmarks/results/`` or in the shipped weights;
- every relative Markdown link reaches a file, and its ``#anchor`` a heading there;
- a docstring's "Used by ..." names only callers that do use the module.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = sorted((ROOT / "torch_ternary").rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))

DOTTED = re.compile(r"(?<![\w.])torch_ternary(?:\.[A-Za-z_]\w*)+")
OPS = re.compile(r"torch_ternary::(?:\{([^}]*)\}|(\w+))")
CODE_SPAN = re.compile(r"``([^`\n]+)``|`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
FILE_EXT = re.compile(r"\.(py|md|json|png|txt|sh|cu|cuh|toml|safetensors|jsonl|tsv)$")
#: first path segments that make a code span a repo path (torch_ternary's subpackages count: README's table)
TOP = {"benchmarks", "tests", "torch_ternary", "cuda", "docs", ".ci"}
#: bare names the docs use for what an example or command writes, not for a repo file
OUTPUT_NAMES = {"demo_mini_flux.png", "image.png", "config.json", "model_index.json"}


def docstrings(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of the module, class and function docstrings of a source file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((node.body[0].lineno, doc))
    return out


def texts() -> list[tuple[str, Path, str]]:
    """Everything checked: ``(where, file, text)``."""
    out = [(str(p.relative_to(ROOT)), p, p.read_text()) for p in DOCS]
    for p in SOURCES:
        out += [(f"{p.relative_to(ROOT)}:{line}", p, doc) for line, doc in docstrings(p)]
    return out


def packages() -> set[str]:
    """pyproject's ``[tool.setuptools] packages`` (read by pattern: ``tomllib`` needs Python 3.11)."""
    text = (ROOT / "pyproject.toml").read_text()
    listing = re.search(r"^packages\s*=\s*\[(.*?)\]", text, re.S | re.M)
    return set(re.findall(r'"([\w.]+)"', listing.group(1)))


def package_dirs() -> dict[str, str]:
    """pyproject's ``[tool.setuptools.package-dir]``: package -> folder."""
    text = (ROOT / "pyproject.toml").read_text()
    table = re.search(r"^\[tool\.setuptools\.package-dir\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M)
    return dict(re.findall(r'^"([\w.]+)"\s*=\s*"([^"]+)"', table.group(1), re.M)) if table else {}


def resolve(name: str):
    """The module or attribute ``name`` names; raises ``LookupError`` if there is none."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and not module.startswith(e.name):
                raise  # the module exists but imports something missing
            if module in packages():  # a data-only package (kernels.cuda_src: the CUDA sources)
                return module
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise LookupError(f"{'.'.join(parts[:i])} has no {'.'.join(parts[i:])}")
            obj = getattr(obj, attr)
        return obj
    raise LookupError(f"no module {parts[0]}")


def legacy_prefix(name: str) -> str | None:
    from torch_ternary._legacy import LEGACY_MODULES

    parts = name.split(".")
    return next((".".join(parts[:i]) for i in range(len(parts), 1, -1) if ".".join(parts[:i]) in LEGACY_MODULES), None)


def test_dotted_names_resolve_by_their_current_paths():
    import torch_ternary  # noqa: F401  (installs the legacy finder, as for a user)

    problems, seen = [], set()
    for where, path, text in texts():
        for name in DOTTED.findall(text):
            seen.add(name)
            try:
                resolve(name)
            except (LookupError, ImportError) as e:
                problems.append(f"{where}: {name} does not resolve ({e})")
                continue
            old = legacy_prefix(name)
            if old and "_legacy" not in text:
                problems.append(f"{where}: {name} uses the 0.1.0 path {old}; name its current module")
    assert len(seen) > 40
    assert not problems, "\n".join(problems)


def test_pyproject_is_read():
    assert {"torch_ternary", "torch_ternary.kernels.cuda_src"} <= packages()
    assert package_dirs() == {"torch_ternary.kernels.cuda_src": "cuda"}


def test_resolve_can_fail():
    assert resolve("torch_ternary.format.packing").__name__ == "torch_ternary.format.packing"
    assert resolve("torch_ternary.kernels.cuda_src") == "torch_ternary.kernels.cuda_src"
    for name in ("torch_ternary.cuda", "torch_ternary.format.no_such_thing", "torch_ternary.TernaryTensor.nope"):
        with pytest.raises(LookupError):
            resolve(name)
    assert legacy_prefix("torch_ternary.serialization.save_quantized") == "torch_ternary.serialization"
    assert legacy_prefix("torch_ternary.format.packing") is None


def test_custom_ops_named_are_registered():
    import torch

    import torch_ternary  # noqa: F401  (registers the ops)

    problems, seen = [], 0
    for where, _, text in texts():
        for group, single in OPS.findall(text):
            for op in [s.strip() for s in group.split(",")] if group else [single]:
                seen += 1
                if not hasattr(torch.ops.torch_ternary, op):
                    problems.append(f"{where}: torch_ternary::{op} is not a registered op")
    assert seen >= 6
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------- paths
def path_like(span: str) -> bool:
    if any(c in span for c in "<>*{}$ ,()=") or span.startswith(("-", "/", "http")):
        return False
    head = span.split("/", 1)[0]
    subpackages = {p.name for p in (ROOT / "torch_ternary").iterdir() if p.is_dir() and not p.name.startswith("_")}
    if "/" not in span or head not in TOP | subpackages:
        return False
    last = span.split("::")[0].rstrip("/").rsplit("/", 1)[-1]
    return span.split("::")[0].endswith("/") or bool(FILE_EXT.search(last))


def find(rel: str, near: Path) -> Path | None:
    """``rel`` from the repo root, the package, a subpackage or the text's folder; a package that
    pyproject maps to another folder (``torch_ternary/kernels/cuda_src`` is ``cuda/``) is found there."""
    bases = [ROOT, ROOT / "torch_ternary", near.parent]
    bases += [p for p in (ROOT / "torch_ternary").iterdir() if p.is_dir()]
    for package, folder in package_dirs().items():
        prefix = package.replace(".", "/")
        if rel.rstrip("/") == prefix or rel.startswith(prefix + "/"):
            rel = folder + rel[len(prefix):]
    return next((b / rel for b in bases if (b / rel).exists()), None)


def defines(path: Path, name: str) -> bool:
    text = path.read_text()
    return bool(re.search(rf"^\s*(?:def|class|async def)\s+{re.escape(name)}\b|^{re.escape(name)}\s*[:=]", text, re.M))


def path_problems(where: str, near: Path, text: str, bare_results: bool) -> list[str]:
    problems = []
    for a, b in CODE_SPAN.findall(text):
        span = (a or b).strip()
        if path_like(span):
            rel, _, member = span.partition("::")
            found = find(rel, near)
            if found is None:
                problems.append(f"{where}: {span}: no such file or folder")
            elif member and not defines(found, member):
                problems.append(f"{where}: {span}: {rel} defines no {member}")
        elif (bare_results and "/" not in span and re.fullmatch(r"[\w.-]+\.(json|png)", span)
              and span not in OUTPUT_NAMES):
            if not any((d / span).exists() for d in (ROOT / "benchmarks" / "results", ROOT / "torch_ternary" / "mini" / "weights")):
                problems.append(f"{where}: {span}: in neither benchmarks/results/ nor torch_ternary/mini/weights/")
    return problems


def test_repo_paths_exist():
    problems = []
    for where, path, text in texts():
        problems += path_problems(where, path, text, bare_results=path.suffix == ".md")
    assert not problems, "\n".join(problems)


def test_path_check_can_fail(tmp_path):
    doc = ROOT / "docs" / "x.md"
    assert path_problems("x", doc, "`benchmarks/results/flux_size.json` `format/packing.py` `docs/cli.md`", True) == []
    bad = ("`benchmarks/results/quality_grid.png` `tests/test_cli.py::test_nope` ``torch_ternary/nope.py`` "
           "`quality_mini_v9.json`")
    assert len(path_problems("x", doc, bad, True)) == 4
    assert path_problems("x", doc, "`runs/v5` `--height/--width` `workdir/<x>` `demo_mini_flux.png`", True) == []


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_\[\]]|\(([^)]*)\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_markdown_links_and_anchors_exist():
    problems, seen = [], 0
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            seen += 1
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file) if file else doc
            if not dest.exists():
                problems.append(f"{doc.relative_to(ROOT)}: link {target}: no such file")
                continue
            if anchor and dest.suffix == ".md":
                heads = {slug(h) for h in re.findall(r"^#+\s+(.*)$", dest.read_text(), re.M)}
                if anchor not in heads:
                    problems.append(f"{doc.relative_to(ROOT)}: link {target}: no heading #{anchor} in {file or 'it'}")
    assert seen > 20
    assert not problems, "\n".join(problems)


def test_slug():
    assert slug("Diffusers folders (sharded or not)") == "diffusers-folders-sharded-or-not"
    assert slug("Quality without calibration") == "quality-without-calibration"
    assert slug("`torch.compile`") == "torchcompile"


# ---------------------------------------------------------------------------------------------- callers
USED_BY = re.compile(r"[Uu]sed by (.*?)(?:[;:]|\.\s|\.$)", re.S)


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, and every ``module.name`` it imports from one."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def caller_files(span: str) -> list[Path]:
    """The source files that implement a caller named in a docstring."""
    if span.startswith("torch-ternary "):  # a subcommand: the CLI module and what it imports for it
        return [ROOT / "torch_ternary" / "cli.py", ROOT / "torch_ternary" / "calibration" / "cli.py"]
    if span.startswith("torch_ternary."):
        return [Path(importlib.import_module(span).__file__)]
    return [ROOT / span] if (ROOT / span).exists() else []


def test_used_by_claims_name_real_callers():
    """A module docstring that says who uses it names callers that import it."""
    problems, seen = [], 0
    for path in sorted((ROOT / "torch_ternary").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        for claim in USED_BY.findall(doc):
            for a, b in CODE_SPAN.findall(claim):
                span = (a or b).strip()
                files = caller_files(span)
                seen += 1
                if not files:
                    problems.append(f"{path.relative_to(ROOT)}: 'Used by {span}': no such caller")
                elif not any(module in imported_modules(f) or any(m.startswith(module + ".") for m in imported_modules(f))
                             for f in files):
                    problems.append(f"{path.relative_to(ROOT)}: 'Used by {span}': it does not use {module}")
    assert seen >= 1
    assert not problems, "\n".join(problems)
