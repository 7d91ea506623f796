"""requirements.lock (make lock) is in sync with pyproject.toml: every dependency of the project,
its service and test extras, is pinned there with hashes, at a version inside its range."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def locked() -> dict[str, tuple[Version, list[str]]]:
    """name -> (version, hashes) from the lock's `name==version \\ --hash=...` entries."""
    entries: dict[str, tuple[Version, list[str]]] = {}
    current: str | None = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if m := PIN.match(line):
            current = canonicalize_name(m.group(1))
            entries[current] = (Version(m.group(2)), [])
        elif current and (h := re.search(r"--hash=(sha256:[0-9a-f]{64})", line)):
            entries[current][1].append(h.group(1))
        elif not line.startswith(" "):
            current = None
    return entries


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lists = [project["dependencies"], *(project["optional-dependencies"][x] for x in ("service", "test"))]
    return [Requirement(r) for group in lists for r in group]


LOCK = locked()


@pytest.mark.parametrize("req", declared(), ids=str)
def test_each_declared_dependency_is_pinned_in_its_range(req: Requirement) -> None:
    name = canonicalize_name(req.name)
    assert name in LOCK, f"{req.name} is in pyproject.toml but not in requirements.lock: run `make lock`"
    version, _ = LOCK[name]
    assert req.specifier.contains(version, prereleases=True), (
        f"requirements.lock pins {req.name}=={version}, outside pyproject's {req.specifier}: run `make lock`")


def test_every_pin_has_hashes_and_torch_stays_pinned() -> None:
    assert len(LOCK) > 50
    assert [name for name, (_, hashes) in LOCK.items() if not hashes] == []
    assert LOCK["torch"][0] == Version("2.14.1") and LOCK["torchvision"][0] == Version("0.29.1")


def test_the_lock_has_no_index_or_local_path_baked_in() -> None:
    text = (ROOT / "requirements.lock").read_text()
    assert "--index-url" not in text and "--extra-index-url" not in text and "--find-links" not in text
    assert "file://" not in text and "/opt/" not in text
