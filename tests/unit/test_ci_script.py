""".ci/run runs the README's test command, word for word, after the oracles and Azurite."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _installs(ci: list[str], *words: str) -> list[int]:
    """Indexes of the command lines (not comments) of ``ci`` that name all ``words``."""
    return [
        i for i, line in enumerate(ci) if not line.startswith("#") and all(w in line for w in words)
    ]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    command = next(line for line in readme[:5] if "pytest" in line)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci
    # that command and no other: no second test run before or after it
    assert [ci[i] for i in _installs(ci, "pytest")] == [command]
    # each oracle installed (not just named in a comment), before the tests run
    qemu = _installs(ci, "apt-get install", "qemu-utils")
    libvhdi = _installs(ci, "pip install", "libvhdi-python")
    oracles = qemu + libvhdi
    assert qemu and libvhdi and max(oracles) < ci.index(command)
    # the servers the remote tests start: moto comes with the test extra, Azurite from npm
    assert ci.index("npm install -g azurite") < ci.index(command)
