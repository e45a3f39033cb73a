"""Registration with the installed diffusers: the private tables it writes, the minimum version, a too-old diffusers.

Run against the minimum release with ``python tests/integrations/min_diffusers.py`` (and against a
too-old one with ``--version 0.38.0``: then the other modules are skipped and the too-old test runs).
"""

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from .conftest import require_extras

require_extras(compatible=False)  # a too-old diffusers is what some tests here are about

import diffusers
from packaging.version import Version

from torch_ternary import TernaryConfig
from torch_ternary.errors import DiffusersVersionError, TernaryConfigError, TernaryError
from torch_ternary.integrations import registration
from torch_ternary.integrations.registration import HOOKS, MIN_DIFFUSERS, QUANT_METHOD, TABLES

ROOT = Path(__file__).resolve().parents[2]
COMPATIBLE = registration.diffusers_problem() is None
needs_compatible = pytest.mark.skipif(not COMPATIBLE, reason=f"diffusers {diffusers.__version__} < {MIN_DIFFUSERS}")

#: where diffusers calls the quantizer's hooks (the attribute names referenced by their code)
CALLERS = ("diffusers.models.modeling_utils", "diffusers.models.model_loading_utils", "diffusers.quantizers.base")


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def _names_used(module) -> set[str]:
    """Every attribute / global name the code of ``module`` (functions, methods, nested code) refers to."""
    import inspect

    def code_of(obj):
        obj = obj.fget if isinstance(obj, property) else getattr(obj, "__func__", obj)
        obj = inspect.unwrap(obj) if callable(obj) else obj  # through decorators (validate_hf_hub_args, ...)
        return obj.__code__ if isinstance(obj, types.FunctionType) else None

    names: set[str] = set()
    members = []
    for obj in vars(module).values():
        if isinstance(obj, type) and obj.__module__ == module.__name__:
            members.extend(vars(obj).values())
        else:
            members.append(obj)
    stack = [c for c in map(code_of, members) if c is not None]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return names


# ---------------------------------------------------------------------- the tables, in the installed diffusers
def test_every_table_written_exists_and_holds_the_entry():
    from diffusers import PipelineQuantizationConfig

    import torch_ternary  # noqa: F401  (registers, or has registered, through the import hook)

    # the tables PipelineQuantizationConfig consults (importing transformers' one, as it does)
    PipelineQuantizationConfig(quant_mapping={"transformer": TernaryConfig()})._get_quant_config_list()
    for module_name, attr in TABLES:
        if module_name.startswith("transformers") and importlib.util.find_spec("transformers") is None:
            continue
        table = getattr(importlib.import_module(module_name), attr)
        assert isinstance(table, dict), (module_name, attr)
        assert "torch_ternary" in table, (module_name, attr)
    from diffusers.quantizers import auto

    if COMPATIBLE:
        from torch_ternary.integrations.diffusers_quantizer import TernaryDiffusersQuantizer, TernaryQuantizationConfig

        assert auto.AUTO_QUANTIZER_MAPPING[QUANT_METHOD] is TernaryDiffusersQuantizer
        assert auto.AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] is TernaryQuantizationConfig
    else:
        assert auto.AUTO_QUANTIZER_MAPPING[QUANT_METHOD].__name__ == "TernaryDiffusersQuantizerUnavailable"


def test_registration_writes_only_the_tables_it_declares():
    """Every write goes through registration.py: its functions touch exactly the tables of TABLES."""
    declared = {(m, a) for m, a in TABLES}
    written = set()
    for fn, module_name in ((registration.register_into_diffusers, "diffusers.quantizers.auto"),
                            (registration.register_into_transformers, "transformers.quantizers.auto")):
        fake = types.SimpleNamespace(AUTO_QUANTIZER_MAPPING={}, AUTO_QUANTIZATION_CONFIG_MAPPING={})
        fn(fake)
        written |= {(module_name, attr) for attr, table in vars(fake).items() if table}
    assert written == declared
    sources = [p for p in (ROOT / "torch_ternary").rglob("*.py") if p.name != "registration.py"]
    for path in sources:
        assert not re.search(r"AUTO_QUANTI\w*MAPPING\s*\[[^\]]*\]\s*=", path.read_text()), path


def test_config_signature_matches_what_pipeline_quantization_config_compares():
    import inspect

    from torch_ternary.integrations.diffusers_quantizer import TernaryQuantizationConfig

    def names(fn):
        return set(inspect.signature(fn).parameters) - {"self"}

    expected = names(TernaryQuantizationConfig.__init__)
    assert names(registration.TernaryTransformersConfig.__init__) == expected
    _, stand_in = registration._too_old_classes("too old")
    assert names(stand_in.__init__) == expected


# ---------------------------------------------------------------------- the minimum version
def test_pyproject_lower_bound_is_the_minimum():
    text = (ROOT / "pyproject.toml").read_text()
    bound = re.search(r'"diffusers>=([0-9.]+)"', text).group(1)
    assert Version(bound) == Version(MIN_DIFFUSERS)


@needs_compatible
def test_installed_diffusers_has_and_calls_every_hook():
    """The table of registration.HOOKS, checked on the installed diffusers (run it on MIN_DIFFUSERS too)."""
    from diffusers.quantizers.base import DiffusersQuantizer

    assert Version(diffusers.__version__).release >= Version(MIN_DIFFUSERS).release
    assert registration.missing_hooks(DiffusersQuantizer) == []
    used = set().union(*(_names_used(importlib.import_module(m)) for m in CALLERS))
    assert sorted(h for h in HOOKS if h not in used) == []
    assert Version(max(HOOKS.values())) == Version(MIN_DIFFUSERS)  # the minimum is the newest hook's release


def test_problem_names_version_minimum_and_missing_hooks():
    class Old:  # a DiffusersQuantizer of 0.38: everything but the 0.39 hooks
        pass

    for name, since in HOOKS.items():
        if Version(since) < Version("0.39.0"):
            setattr(Old, name, None)
    problem = registration.diffusers_problem("0.38.0", Old)
    assert "0.38.0" in problem and f">={MIN_DIFFUSERS}" in problem
    for name, since in HOOKS.items():
        assert (name in problem) == (since == "0.39.0"), name
    assert registration.diffusers_problem("0.38.0", type("Full", (), dict.fromkeys(HOOKS))) is not None  # by version
    assert registration.diffusers_problem(MIN_DIFFUSERS, type("Full", (), dict.fromkeys(HOOKS))) is None
    with pytest.raises(DiffusersVersionError, match="maybe_update_loaded_keys"):
        registration.check_diffusers("0.38.0", Old)
    assert issubclass(DiffusersVersionError, TernaryError) and issubclass(DiffusersVersionError, ImportError)


@needs_compatible
def test_too_old_diffusers_warns_at_import_and_from_pretrained_raises(tmp_path):
    """A diffusers reporting 0.38.0: ``import diffusers`` works (a DiffusersVersionWarning), every use of the
    quantizer raises DiffusersVersionError naming both versions; ``quantize_`` still works."""
    out = _python(
        "import warnings, torch\n"
        "import torch_ternary\n"
        "import diffusers\n"
        "diffusers.__version__ = '0.38.0'\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    from diffusers import FluxPipeline, FluxTransformer2DModel, PipelineQuantizationConfig\n"
        "print('WARN', [(x.category.__name__, str(x.message)) for x in w if 'torch-ternary' in str(x.message)])\n"
        "from torch_ternary.errors import DiffusersVersionError\n"
        "from torch_ternary.testing.flux import FLUX_TINY_CONFIG, build_flux\n"
        "m = build_flux(FLUX_TINY_CONFIG)\n"
        f"m.save_pretrained({str(tmp_path / 'dense')!r})\n"
        "attempts = {\n"
        f"  'from_pretrained': lambda: FluxTransformer2DModel.from_pretrained({str(tmp_path / 'dense')!r},\n"
        "      quantization_config=torch_ternary.TernaryConfig()),\n"
        "  'register_diffusers': torch_ternary.integrations.register_diffusers,\n"
        "  'TernaryQuantizationConfig': lambda: torch_ternary.integrations.TernaryQuantizationConfig,\n"
        "  'quant_backend': lambda: PipelineQuantizationConfig(quant_backend='torch_ternary',\n"
        "      quant_kwargs={'codec': '2bit'})._resolve_quant_config(True, 'transformer'),\n"
        "}\n"
        "for name, f in attempts.items():\n"
        "    try:\n"
        "        f()\n"
        "        print('NO ERROR', name)\n"
        "    except DiffusersVersionError as e:\n"
        "        print('RAISED', name, str(e))\n"
        "PipelineQuantizationConfig(quant_mapping={'transformer': torch_ternary.TernaryConfig()})  # accepted\n"
        "report = torch_ternary.quantize_(m, torch_ternary.TernaryConfig())\n"
        "print('QUANTIZED', len(report.layers_converted) > 0, hasattr(m, 'hf_quantizer'))\n"
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    warn = next(line for line in lines if line.startswith("WARN"))
    assert "DiffusersVersionWarning" in warn and "0.38.0" in warn and MIN_DIFFUSERS in warn
    raised = [line for line in lines if line.startswith("RAISED")]
    assert len(raised) == 4 and not any(line.startswith("NO ERROR") for line in lines), out.stdout
    assert all("0.38.0" in line and f"diffusers>={MIN_DIFFUSERS}" in line for line in raised)
    assert "QUANTIZED True False" in lines  # no hf_quantizer: the post-quantize hook is not registered


@pytest.mark.skipif(COMPATIBLE, reason=f"the installed diffusers {diffusers.__version__} is supported")
def test_installed_diffusers_too_old_fails_clearly(tmp_path):
    """Only on a real too-old diffusers (``min_diffusers.py --version 0.38.0``)."""
    from diffusers import FluxTransformer2DModel

    from torch_ternary.testing.flux import FLUX_TINY_CONFIG, build_flux

    build_flux(FLUX_TINY_CONFIG).save_pretrained(tmp_path / "dense")
    with pytest.raises(DiffusersVersionError, match=re.escape(diffusers.__version__)):
        FluxTransformer2DModel.from_pretrained(tmp_path / "dense", quantization_config=TernaryConfig())


# ---------------------------------------------------------------------- transformers components
@needs_compatible
def test_transformers_side_entry_refuses_clearly():
    with pytest.raises(TernaryConfigError, match="components_to_quantize"):
        registration.TernaryTransformersConfig(codec="2bit")
    with pytest.raises(TernaryConfigError, match="components_to_quantize"):
        registration.TernaryTransformersConfig.from_dict({"quant_method": "torch_ternary"})
