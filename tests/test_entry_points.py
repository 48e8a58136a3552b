"""Every ``python -m MODULE`` the project's own scripts, compose file and docs run has an
entry point: a module that runs ``main`` under ``if __name__ == "__main__"``, or a package
with a ``__main__.py``. A split that drops the guard leaves a command that exits 0 and does
nothing (simulators/run.py did: the demo started no simulators)."""

from __future__ import annotations

import re

from tests.conftest import ROOT

SOURCES = ["hubctl", "scripts/lib.sh", "compose.yaml", "deploy/Dockerfile", "README.md",
           "docs/DEPLOYMENT.md", "docs/PERFORMANCE.md", "docs/ARCHITECTURE.md"]
OURS = ("core", "ingest", "dispatch", "hub", "simulators")


_NAME = "(?:" + "|".join(OURS) + r")(?:\.\w+)*"
# "python -m NAME" in scripts and docs, and compose's exec form ["python", "-m", "NAME"]
_FORMS = (re.compile(r"-m\s+(" + _NAME + ")"), re.compile(r'"-m",\s*"(' + _NAME + ')"'))


def _commands() -> set[str]:
    found: set[str] = set()
    for name in SOURCES:
        path = ROOT / name
        if path.exists():
            text = path.read_text("utf-8")
            for form in _FORMS:
                found |= set(form.findall(text))
    return found


def test_every_module_the_project_runs_with_python_m_has_an_entry_point() -> None:
    commands = _commands()
    assert {"hub", "simulators.run", "simulators.bench", "simulators.backfill"} <= commands
    missing = []
    for mod in sorted(commands):
        base = ROOT.joinpath(*mod.split("."))
        if (base / "__main__.py").exists():
            continue
        file = base.with_suffix(".py")
        if not file.exists():
            missing.append(f"{mod}: no such module")
        elif not re.search(r'^if __name__ == "__main__":', file.read_text("utf-8"), re.M):
            missing.append(f"{mod}: no `if __name__ == \"__main__\"` entry")
    assert not missing, "\n".join(missing)
