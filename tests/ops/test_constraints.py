"""constraints.txt pins every runtime dependency, to a version its pyproject range accepts, so a
production install (`pip install -c constraints.txt .`) gets the versions the tests passed with."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    out = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {raw}"
            out[canonicalize_name(name)] = version
    return out


def test_every_dependency_is_pinned_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins()
    required = [Requirement(spec) for spec in project["dependencies"]]
    required += [Requirement(spec) for spec in project["optional-dependencies"]["test"]]
    for requirement in required:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside {requirement}"
        )


def test_install_steps_and_the_launcher_use_it() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install -c constraints.txt" in readme
    assert '-c "$here/constraints.txt"' in (ROOT / "stsync").read_text()
