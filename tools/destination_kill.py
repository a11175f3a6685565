"""Kill campaign for ``pyvhdx convert`` and ``pyvhdx create --preallocate``.

SIGTERM and SIGKILL at ``--points`` seeded random moments each, after the run has
made its temporary file (``.NAME.RANDOM.pyvhdx-tmp``). After every kill the
destination must be the old file or the complete new image, never a partial one;
after SIGTERM no temporary file may be left and the exit status is 143; the run
after a SIGKILL must report and remove the stale temporary file, and a last run
must succeed (see ``run_kill_campaign`` in
tests/integration/test_safe_destinations.py, which runs a few points per case).
Prints one line per case; exits 1 on any failure.

    python tools/destination_kill.py --points 30 --source-mib 1024 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the harness lives with the tests
    sys.path.insert(0, str(REPO))


def main() -> int:
    from tests.integration.test_safe_destinations import (
        convert_case,
        create_case,
        run_kill_campaign,
        write_pattern,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=30, help="kills per signal and case")
    ap.add_argument("--source-mib", type=int, default=1024, help="size of the data converted")
    ap.add_argument("--create-mib", type=int, default=2048, help="size created --preallocate")
    ap.add_argument("--max-delay", type=float, default=3.0, help="latest kill, in seconds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cases", default="convert,create-vhdx,create-vhd")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp one)")
    args = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        source = write_pattern(Path(tmp) / "source.raw", args.source_mib)
        for name in args.cases.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            if name == "convert":
                case = convert_case(folder, source)
            else:
                case = create_case(folder, name.split("-")[1], args.create_mib)
            t0 = time.monotonic()
            try:
                kills = run_kill_campaign(folder, case, args.points, args.seed, args.max_delay)
            except AssertionError:
                failures += 1
                print(f"FAIL {name}:\n{traceback.format_exc()}", flush=True)
                continue
            tally = collections.Counter(
                (k.sig.name, "finished" if k.finished else "interrupted") for k in kills
            )
            print(
                f"ok   {name}: {len(kills)} kills, {dict(sorted(tally.items()))}, "
                f"{time.monotonic() - t0:.0f} s",
                flush=True,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
