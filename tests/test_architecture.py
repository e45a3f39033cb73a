"""The import rules of docs/architecture.md, enforced: every module imports only its own layer and the ones below,
and no two modules import each other, however indirectly (imports inside functions count too).

The rules are :data:`LAYERS`, bottom up; a new module must be given a layer here (the test fails otherwise)
and in docs/architecture.md (the test checks the page lists every layer with its modules).
"""

import ast
import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "torch_ternary"

#: (layer, module patterns), bottom up. A module may import modules of its own layer and of the layers below.
LAYERS = [
    ("foundation", ["torch_ternary.errors", "torch_ternary._lazy", "torch_ternary._version"]),
    ("layout", ["torch_ternary.format.packing", "torch_ternary.format.base3", "torch_ternary.quantization.absmean"]),
    ("ops", ["torch_ternary.ops", "torch_ternary.ops.*"]),
    ("kernels", ["torch_ternary.kernels", "torch_ternary.kernels.*"]),
    ("tensor", ["torch_ternary.tensor"]),
    ("quantization", ["torch_ternary.quantization", "torch_ternary.quantization.*"]),
    ("format", ["torch_ternary.format", "torch_ternary.format.*"]),
    ("integrations", ["torch_ternary.integrations", "torch_ternary.integrations.*",
                      "torch_ternary.testing", "torch_ternary.testing.flux", "torch_ternary.testing.pipelines"]),
    ("applications", ["torch_ternary.calibration", "torch_ternary.calibration.*", "torch_ternary.mini", "torch_ternary.mini.*"]),
    ("entry points", ["torch_ternary", "torch_ternary._legacy", "torch_ternary.cli", "torch_ternary.demo",
                      "torch_ternary.demo_flux"]),
    ("harnesses", ["torch_ternary.testing.format_fuzz"]),
]


def layer_of(module: str) -> int:
    for i, (_, patterns) in enumerate(LAYERS):
        if any(module == p or fnmatch.fnmatchcase(module, p) for p in patterns):
            return i
    raise LookupError(f"{module} is in no layer of tests/test_architecture.py (and docs/architecture.md): give it one")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(module: str) -> set[tuple[str, int]]:
    """``(imported torch_ternary module, line)`` for every import statement of ``module``, at any depth."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("torch_ternary"):
                names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("torch_ternary")]
        for name in names:
            while name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            found.add((name, node.lineno))
    return found


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_imports_go_down_or_sideways_only():
    violations = [f"{m}:{line} imports {t} ({LAYERS[layer_of(t)][0]} above {LAYERS[layer_of(m)][0]})"
                  for m in sorted(MODULES) for t, line in sorted(imports_of(m)) if layer_of(t) > layer_of(m)]
    assert not violations, "\n".join(violations)


def test_no_import_cycles():
    graph = {m: {t for t, _ in imports_of(m) if t != m} for m in MODULES}
    # a package importing its own submodules (re-exports) and a submodule importing a sibling through the
    # package are not cycles of meaning; every other cycle is
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("module,planted,check,match", [
    # an upward import planted in a copy of a low module
    ("torch_ternary.format.packing", "from ..cli import main", "test_imports_go_down_or_sideways_only",
     "format.packing:.* imports torch_ternary.cli"),
    # 0.1.0's cycle: mini.world imported mini.grammar inside a function while grammar imported world
    ("torch_ternary.mini.world", "from .grammar import caption", "test_no_import_cycles", "mini.grammar.*mini.world"),
])
def test_the_checks_fail_on_a_planted_violation(tmp_path, monkeypatch, module, planted, check, match):
    """The checkers themselves can fail."""
    copy = tmp_path / MODULES[module].name
    copy.write_text(MODULES[module].read_text() + f"\n\ndef _f():\n    {planted}  # noqa\n")
    monkeypatch.setitem(MODULES, module, copy)
    with pytest.raises(AssertionError, match=match):
        globals()[check]()


def test_docs_architecture_lists_every_layer():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for name, patterns in LAYERS:
        assert re.search(rf"\|\s*{re.escape(name)}\s*\|", text), f"layer {name!r} missing from docs/architecture.md"
        for p in patterns:
            assert f"`{p}`" in text, f"{p} missing from docs/architecture.md"


def test_import_torch_ternary_imports_neither_diffusers_nor_cupy():
    code = ("import sys, torch_ternary\n"
            "heavy = [m for m in ('diffusers', 'cupy', 'transformers', 'accelerate', 'peft') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert not [m for m in sys.modules if m.startswith('torch_ternary.kernels')] or __import__('torch').version.cuda\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
