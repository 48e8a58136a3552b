"""The import-layer check (pyproject's [tool.importlinter], run by ./hubctl test) passes on
the tree and fails on either back-edge the house once had: dispatch importing ingest, the
hub importing the simulators, and on an import cycle between modules of a package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "ingest", "dispatch", "hub", "simulators")
LINT = Path(sys.executable).parent / "lint-imports"


def _tree(tmp: Path) -> Path:
    """A copy of the packages and the contracts, to add a bad import to."""
    for p in PACKAGES:
        shutil.copytree(ROOT / p, tmp / p, ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-logo", "--no-cache"], cwd=tree, text=True,
                          capture_output=True, env={"PYTHONPATH": str(tree), "PATH": ""},
                          timeout=120)


def test_the_tree_keeps_its_contracts(tmp_path: Path) -> None:
    r = _lint(_tree(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BROKEN" not in r.stdout


@pytest.mark.parametrize(("module", "source", "contract"), [
    ("dispatch/_back_edge.py", "from ingest import mqtt\n", "Floors point down"),
    ("hub/_back_edge.py", "import simulators.demo_town\n", "Floors point down"),
    ("core/_back_edge.py", "from hub import state\n", "Floors point down"),
    # a cycle inside a floor: hub.jobs already imports hub.state
    ("hub/_cycle_a.py", "import hub.jobs\n", None),
])
def test_a_back_edge_fails_the_check(tmp_path: Path, module: str, source: str,
                                     contract: str | None) -> None:
    tree = _tree(tmp_path)
    if contract is None:  # close a cycle: jobs -> state -> _cycle_a -> jobs
        (tree / module).write_text(source)
        state = tree / "hub" / "state.py"
        state.write_text(state.read_text() + "\nfrom hub import _cycle_a  # noqa\n")
        contract = "No import cycles"
    else:
        (tree / module).write_text(source)
    r = _lint(tree)
    assert r.returncode != 0, r.stdout
    # the contract's verdict is the first KEPT or BROKEN after its name (names wrap)
    text = " ".join(r.stdout.split())
    after = text[text.index(contract):]
    verdicts = [v for v in ("KEPT", "BROKEN") if v in after]
    assert min(verdicts, key=after.index) == "BROKEN", r.stdout
