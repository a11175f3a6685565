"""Kill campaign for ``pyvhdx resize`` and ``pyvhdx compact``: SIGKILL at random
points of each case.

The cases (tests/resizekill.py ``CASES`` and ``COMPACT_CASES``): a VHDX grown to
16 TiB (its BAT moves to the end of the file), a fixed VHDX grown, a VHDX shrunk,
a VHD grown to 64 GiB (its BAT moves past the footer); a 256 MiB VHDX and VHD
compacted (``--mode quick``: zero blocks released, the rest packed down).
``--points`` kills a case (default 30), delays spread over the time one
undisturbed run takes. After each kill the
image must open with the old or new size and content, pass ``pyvhdx check``
(but for the VHD footer-copy window) and finish when resized again. Prints one
line per kill and a summary; exits 1 on any failure.

    python tools/resize_kill.py --points 30 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests/resizekill.py holds the harness (shared with the tests)
    sys.path.insert(0, str(REPO))


def main() -> int:
    from tests.resizekill import CASES, COMPACT_CASES, campaign

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=30, help="kills a case")
    ap.add_argument("--seed", type=int, default=1)
    every = CASES + COMPACT_CASES
    ap.add_argument("--cases", default=",".join(c.name for c in every))
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp one)")
    args = ap.parse_args()
    failures = 0
    wanted = set(args.cases.split(","))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for case in (c for c in every if c.name in wanted):
            t0 = time.monotonic()
            outcomes = campaign(case, Path(tmp), args.points, args.seed)
            for o in outcomes:
                flag = "ok  " if o.ok else "FAIL"
                print(f"{flag} {case.name:20} {o.delay:7.3f}s {o.state:32} {o.detail}")
            tally = collections.Counter(o.state for o in outcomes)
            bad = sum(not o.ok for o in outcomes)
            failures += bad
            print(
                f"== {case.name}: {len(outcomes)} kills, {bad} failed, "
                f"{dict(sorted(tally.items()))}, {time.monotonic() - t0:.0f} s",
                flush=True,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
