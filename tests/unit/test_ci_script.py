""".ci/run runs the README's test command, word for word, after the oracles and Azurite."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    command = next(line for line in readme[:5] if "pytest" in line)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci
    oracles = [i for i, line in enumerate(ci) if "qemu-utils" in line or "libvhdi" in line]
    assert oracles and max(oracles) < ci.index(command)
    # the servers the remote tests start: moto comes with the test extra, Azurite from npm
    assert ci.index("npm install -g azurite") < ci.index(command)
