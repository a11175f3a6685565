"""The command line on hostile images (issue 19).

Mutated copies (truncations, bit flips, structure fields set to edge values with
their checksums fixed, structures copied over others: ``tests/fuzzlib.py``) of
the images in ``sample_images/`` and of small built images (logs, partially
present blocks, chains, a VHDX over a VHD, VHD, raw) go through every reading
command of ``pyvhdx`` (``fuzzlib.CLI_READERS``), mostly with ``--json`` and the
open options; now and then the image is missing, a folder, or has lost its
parents. Whatever the image, a command must end with exit status 0, 1 or 2,
print no traceback, and with ``--json`` print one JSON document or nothing.

The commands run in this process (``pyvhdx.cli.main``), each with a time bound
and 1 GiB of address space. Seeded and deterministic: the same cases every run
(the built images differ only in their random GUIDs). A failure lists each case
with its command line and the command that replays it;
``python tools/fuzz.py --cli 2000`` runs a longer campaign. With
``PYVHDX_CLI_FUZZ_FAILURES=FILE`` the failures are also appended to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvhdx.cli import build_parser
from tests.fuzzlib import (
    CLI_HOSTILE_VALUES,
    CLI_OTHERS,
    CLI_READERS,
    CLI_SEEDS,
    SAMPLE_IMAGES,
    Seed,
    Workspace,
    build_seeds,
    case_mutation,
    cli_options,
    cli_plain_argv,
    run_cli,
    run_cli_case,
    sample_seeds,
)

#: The campaign's master seed and the cases per group (the time budget: ~20 s).
MASTER = 19
CASES = {"sample": 16, "built": 24}
#: Seconds one command may take (they take well under one; a busy CI machine is slow).
TIME_LIMIT = 30.0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("clifuzz")
    seeds: dict[str, Seed] = sample_seeds()
    seeds.update(build_seeds(root / "seeds", qemu=False, names=CLI_SEEDS))
    yield Workspace(root / "work", seeds)


def _group(workspace: Workspace, group: str) -> dict[str, Seed]:
    samples = {n: s for n, s in workspace.seeds.items() if n.startswith("sample-")}
    if group == "sample":
        return samples
    return {n: s for n, s in workspace.seeds.items() if n not in samples}


def _report(failures: list[str]) -> None:
    path = os.environ.get("PYVHDX_CLI_FUZZ_FAILURES")
    if path and failures:
        with open(path, "a") as f:
            f.write("".join(line + "\n" for line in failures))


def test_every_subcommand_is_classified() -> None:
    """A new subcommand must be fuzzed here (a reader) or named as one that writes."""
    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    names = set(subparsers[0].choices)
    assert names == set(CLI_READERS) | set(CLI_OTHERS), (
        f"not classified: {sorted(names - set(CLI_READERS) - set(CLI_OTHERS))}; "
        f"gone: {sorted(set(CLI_READERS) | set(CLI_OTHERS) - names)}"
    )


def test_unmutated_images_read(workspace: Workspace) -> None:
    """The command lines the fuzzer builds work on the unmutated images: a renamed
    option would otherwise turn every case into a harmless usage error."""
    failures = []
    names = [*_group(workspace, "sample"), "vhdx-chain3"]
    for i, name in enumerate(names):
        unchanged = {"seed": name, "file": workspace.seeds[name].target, "ops": []}
        for r in run_cli_case(
            workspace, unchanged, i, count=0, time_limit=TIME_LIMIT, trouble=False
        ):
            bad = list(r.problems)
            if r.status not in (0, 1):
                bad.append(f"exit status {r.status}: {r.stderr.strip()[-300:]}")
            elif "--json" in r.argv and r.status == 0 and not r.stdout.strip():
                bad.append("no JSON on stdout")
            if bad:
                failures.append(f"{name}: {r.describe(workspace.root)}; {'; '.join(bad)}")
    assert not failures, "\n".join(failures)


def test_hostile_option_values(tmp_path: Path) -> None:
    """Each option of a reading command that takes a value, given values it must
    refuse (or take): a usage error or a pyvhdx error, never a traceback."""
    other = SAMPLE_IMAGES / "dynamic.vhdx"
    image = tmp_path / "dynamic.vhdx"
    shutil.copyfile(other, image)
    out = tmp_path / "out"
    out.mkdir()
    failures = []
    runs = 0
    for command in CLI_READERS:
        accepted = cli_options(command)
        for option, values in sorted(CLI_HOSTILE_VALUES.items()):
            if option not in accepted:
                continue
            for value in values:
                argv = [*cli_plain_argv(command, image, other, out), option, value, "--json"]
                r = run_cli(argv, time_limit=TIME_LIMIT)
                runs += 1
                if r.problems:
                    failures.append(f"[cause {r.cause or '?'}] {r.describe(tmp_path)}")
    assert runs >= 40
    _report(failures)
    assert not failures, f"{len(failures)} of {runs} command runs misbehaved:\n" + "\n".join(
        failures
    )


@pytest.mark.parametrize("group", sorted(CASES))
def test_cli_on_mutated_images(workspace: Workspace, group: str) -> None:
    seeds = _group(workspace, group)
    failures = []
    runs = 0
    for case_id in range(CASES[group]):
        mutation, rng_seed = case_mutation(seeds, MASTER, case_id)
        for r in run_cli_case(workspace, mutation, rng_seed, time_limit=TIME_LIMIT):
            runs += 1
            if r.problems:
                replay = (
                    f"python tools/fuzz.py --cli 1 --group {group} --seed {MASTER} "
                    f"--start {case_id}"
                )
                failures.append(
                    f"[{group} case {case_id}, seed image {mutation['seed']}, cause "
                    f"{r.cause or '?'}] {r.describe(workspace.root)} | mutation "
                    f"{json.dumps(mutation)[:300]} | replay: {replay}"
                )
    assert runs >= CASES[group] * 2  # most cases run their commands (not all skipped)
    _report(failures)
    assert not failures, f"{len(failures)} of {runs} command runs misbehaved:\n" + "\n".join(
        failures
    )


def test_the_judge_sees_a_bad_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that lets an exception out, prints half a JSON document or exits
    with another status is caught (the fuzz tests can fail)."""
    import pyvhdx.cli

    image = str(SAMPLE_IMAGES / "dynamic.vhdx")
    assert run_cli(["info", image, "--json"]).problems == []

    def broken(argv: list[str] | None = None) -> int:
        print("[", flush=True)
        raise KeyError("not a pyvhdx error")

    monkeypatch.setattr(pyvhdx.cli, "main", broken)
    r = run_cli(["map", image, "--json"])
    assert any("KeyError escaped" in p for p in r.problems)
    assert any("not JSON" in p for p in r.problems)
    monkeypatch.setattr(pyvhdx.cli, "main", lambda argv=None: 3)
    assert run_cli(["info", image]).problems == ["exit status 3"]

    def printed_traceback(argv: list[str] | None = None) -> int:
        try:
            raise KeyError("caught, then printed")
        except KeyError:
            traceback.print_exc()
        return 1

    monkeypatch.setattr(pyvhdx.cli, "main", printed_traceback)
    problems = run_cli(["info", image]).problems
    assert len(problems) == 1 and problems[0].startswith("traceback on stderr")

    def half_json(argv: list[str] | None = None) -> int:
        print('{"virtual_size": 1', flush=True)
        return 0

    monkeypatch.setattr(pyvhdx.cli, "main", half_json)
    problems = run_cli(["info", image, "--json"]).problems
    assert len(problems) == 1 and "not JSON" in problems[0]
