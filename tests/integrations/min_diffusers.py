"""Run the integration tests against the oldest supported diffusers (``MIN_DIFFUSERS``), or another release.

::

    python tests/integrations/min_diffusers.py                    # diffusers == MIN_DIFFUSERS
    python tests/integrations/min_diffusers.py --version 0.38.0   # too old: the modules are reported skipped,
                                                                  # the too-old tests of test_registration.py run
    python tests/integrations/min_diffusers.py -- -x -k pipeline  # arguments after -- go to pytest

The release is installed with ``pip install --no-deps --target`` into a scratch folder (never into the
environment), together with every package whose version pip's resolver picks differently beside it: pip
resolves (``--dry-run --report``) the release with the rest of the ``diffusers`` extra of pyproject.toml and
the environment's own torch, and the packages of that resolution that the environment lacks or has in
another version go to the folder (diffusers 0.39 wants ``huggingface_hub<2`` and ``httpx``, and the
environment's transformers then has to be one that runs with that hub, for example). The tests of this
folder run with that folder first on ``PYTHONPATH`` and ``TORCH_TERNARY_REQUIRE_EXTRAS=1``: an extra that
cannot be imported fails the run instead of skipping its modules. The folder is kept (``--target``, default
in the temp dir) and reused when it already holds that release. Exit status: pytest's (or pip's).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _min_diffusers() -> str:
    sys.path.insert(0, str(ROOT))
    from torch_ternary.integrations.registration import MIN_DIFFUSERS

    return MIN_DIFFUSERS


def _unsatisfied(target: Path) -> list[str]:
    """Requirements of the distributions in ``target`` that neither ``target`` nor the environment satisfies."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    here = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=[str(target)])}
    missing = []
    for dist in importlib.metadata.distributions(path=[str(target)]):
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(req.name)
            have = here.get(name)
            if have is None:
                try:
                    have = importlib.metadata.version(req.name)
                except importlib.metadata.PackageNotFoundError:
                    have = None
            if have is None or not req.specifier.contains(have, prereleases=True):
                missing.append(f"{req.name}{req.specifier}")
    return sorted(set(missing))


def _extra_requirements(version: str) -> list[str]:
    """The ``diffusers`` extra of pyproject.toml with ``diffusers==version`` in place of its diffusers entry."""
    import tomllib

    from packaging.requirements import Requirement

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["diffusers"]
    return [f"diffusers=={version}"] + [r for r in extra if Requirement(r).name != "diffusers"]


def _resolved(version: str) -> list[str]:
    """``name==version`` of every package pip resolves for the extra around ``diffusers==version`` (and the
    environment's torch) that the environment lacks or holds in another version."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--report", str(report), *_extra_requirements(version), f"torch=={torch.__version__}"],
                       check=True)
        picked = [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.loads(report.read_text())["install"]]
    out = []
    for name, ver in picked:
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != ver:
            out.append(f"{name}=={ver}")
    return out


def install(version: str, target: Path) -> Path:
    """``diffusers==version`` and what it needs beside the environment, into ``target`` (reused if it holds them)."""
    stamp = target / ".installed.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("diffusers") == version:
        return target
    shutil.rmtree(target, ignore_errors=True)
    pending = _resolved(version)
    while pending:  # a requirement's own requirements may be unsatisfied too
        print("installing into", target, ":", " ".join(pending), flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
                        "--target", str(target), *pending], check=True)
        pending = _unsatisfied(target)
    stamp.write_text(json.dumps({"diffusers": version}))
    return target


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=None, help="diffusers release (default: MIN_DIFFUSERS)")
    parser.add_argument("--target", default=None, help="scratch folder for the install")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    version = args.version or _min_diffusers()
    target = Path(args.target or Path(tempfile.gettempdir()) / f"torch-ternary-diffusers-{version}")
    t0 = time.time()
    try:
        install(version, target)
    except subprocess.CalledProcessError as e:
        return e.returncode
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCH_TERNARY_REQUIRE_EXTRAS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)}
    check = subprocess.run([sys.executable, "-c", "import diffusers; print(diffusers.__version__, diffusers.__file__)"],
                           env=env, capture_output=True, text=True, check=False)
    print("diffusers under test:", check.stdout.strip() or check.stderr.strip(), flush=True)
    if not check.stdout.startswith(version + " "):
        print(f"expected diffusers {version} from {target}", file=sys.stderr)
        return 1
    t1 = time.time()
    rc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q", str(HERE), *extra],
                        cwd=ROOT, env=env, check=False).returncode
    print(f"install {t1 - t0:.0f} s, tests {time.time() - t1:.0f} s (diffusers {version})", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
