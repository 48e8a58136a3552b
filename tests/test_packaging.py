"""Installing gridhub claims no top-level name in site-packages.

The project's packages have plain names (``core``, ``hub``, ...) that any other
distribution may install too; pyproject.toml packages none of them and the code runs from
its tree. The check asks setuptools itself what a wheel would hold: ``build_py`` (the step
that copies packages and modules into a wheel's tree) runs on a scratch copy of
pyproject.toml beside stand-ins of the real top-level packages, and the output must name
none of them. The second test shows the check bites on the configuration it replaced.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("core", "ingest", "dispatch", "hub", "frontend", "simulators")
# What pyproject.toml said before: every top-level package straight into site-packages.
OLD_FIND = '''[tool.setuptools.packages.find]
include = ["core*", "ingest*", "dispatch*", "hub*", "simulators*", "frontend*"]
'''
SETUPTOOLS_TABLE = "[tool.setuptools]\n"


def packaged(pyproject: str, tmp: Path) -> set[str]:
    """Top-level names setuptools would put in a wheel built from ``pyproject`` next to
    the project's top-level packages (an ``__init__.py`` each, which is all discovery
    needs), and next to every top-level ``.py`` file of the checkout."""
    (tmp / "pyproject.toml").write_text(pyproject)
    (tmp / "README.md").write_text((ROOT / "README.md").read_text())
    for name in TOP_LEVEL:
        assert (ROOT / name).is_dir(), name
        (tmp / name).mkdir()
        (tmp / name / "__init__.py").write_text("")
    for module in ROOT.glob("*.py"):
        (tmp / module.name).write_text("")
    out = tmp / "wheel-tree"
    subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()",
         "--quiet", "build_py", "--build-lib", str(out)],
        cwd=tmp, check=True, capture_output=True, text=True, timeout=60)
    return {p.name.removesuffix(".py") for p in out.iterdir()} if out.exists() else set()


def test_a_wheel_holds_no_top_level_package(tmp_path: Path) -> None:
    names = packaged((ROOT / "pyproject.toml").read_text(), tmp_path)
    assert names == set(), f"would install {sorted(names)} into site-packages"


def test_the_check_fails_on_packages_found_at_the_top(tmp_path: Path) -> None:
    text = (ROOT / "pyproject.toml").read_text()
    start = text.index(SETUPTOOLS_TABLE)
    end = text.index("\n[", start + 1) + 1
    old = text[:start] + OLD_FIND + text[end:]
    assert packaged(old, tmp_path) == set(TOP_LEVEL)
