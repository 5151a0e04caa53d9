"""The install lines cannot drift: CI runs the README's test line verbatim, both Quickstart lines install through
``constraints.txt``, and that file pins every requirement ``setup.py`` names (core and test extras) to a version
inside ``setup.py``'s range."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _quickstart_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in section.strip().splitlines() if line.strip()]


def _setup_requirements() -> list[Requirement]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    wanted = ("install_requires", "extras_require")
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in wanted}
    return [Requirement(r) for r in kwargs["install_requires"] + kwargs["extras_require"]["test"]]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line is not NAME==VERSION: {line!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_ci_runs_the_readme_test_line_verbatim():
    demo, tests = _quickstart_lines()
    assert demo.endswith("mindvideo demo") and tests.endswith("python -m pytest -n 2")
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert any(line.startswith(tests) for line in ci_lines), "the README's test line is not in .ci/run verbatim"


@pytest.mark.parametrize("which", [0, 1])
def test_quickstart_installs_through_the_constraints(which):
    line = _quickstart_lines()[which]
    installs = re.findall(r"pip install ([^&]+)", line)
    assert installs and all(part.startswith("-c constraints.txt ") for part in installs), line


def test_constraints_pin_every_requirement_inside_its_range():
    pins = _pins()
    for requirement in _setup_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is required by setup.py but not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])
