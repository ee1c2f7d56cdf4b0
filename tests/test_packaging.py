"""Packaging: environment.yml and pyproject.toml name the same dependencies; the API is importable."""

import re
from pathlib import Path

import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _normalise(spec: str) -> str:
    return re.sub(r"\s+", "", spec).lower().replace("_", "-")


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_normalise(d) for d in project["dependencies"] + project["optional-dependencies"]["dev"]}
    wanted = {d for d in wanted if "python-version<" not in d}  # back-ports for old Pythons only
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_normalise(d) for d in pip_block if not d.startswith("-e")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject.toml: {wanted - listed}"
    assert "-e .[dev]" in pip_block, "environment.yml must install the package itself with its dev extra"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    minimum = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))


def test_readme_documents_the_test_command_and_every_public_name():
    import titn_edu

    readme = (ROOT / "README.md").read_text()
    assert "pytest --nbval" in readme
    undocumented = [n for n in titn_edu.__all__ if not n.startswith("__") and f"`titn_edu.{n}`" not in readme]
    assert not undocumented, f"public names missing from the README's API table: {undocumented}"


def test_every_kernel_source_ships_with_the_package():
    """The accelerator's C++ kernel is built from the installed package's files: each one must be package data."""
    import fnmatch

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["titn_edu"]
    sources = [p.relative_to(ROOT / "titn_edu").as_posix() for p in (ROOT / "titn_edu" / "accel" / "csrc").iterdir()]
    assert {"accel/csrc/inner_block.cpp", "accel/csrc/vmath.h"} <= set(sources)
    missing = [s for s in sources if not any(fnmatch.fnmatch(s, g) for g in globs)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_every_name_in_the_readme_api_tables_exists():
    """The README's API tables match the code: each `titn_edu.NAME` row names something importable."""
    import titn_edu

    readme = (ROOT / "README.md").read_text()
    rows = set(re.findall(r"^\| `titn_edu\.([A-Za-z_]\w*)`", readme, flags=re.MULTILINE))
    assert len(rows) > 40
    missing = sorted(n for n in rows if not hasattr(titn_edu, n))
    assert not missing, f"README API rows that titn_edu does not have: {missing}"


def test_import_titn_edu_leaves_the_benchmark_the_cli_and_the_accelerator_unimported():
    import subprocess
    import sys

    code = "import sys, titn_edu; print(sorted(m for m in ('titn_edu.bench', 'titn_edu.cli', 'titn_edu.accel', 'timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
