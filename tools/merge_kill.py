"""Kill campaign for ``pyvhdx merge``: SIGKILL and SIGINT at random points.

For each format, a child holding ``--child-mib`` MiB (default 512) over a parent
holding as much; ``--points`` kills per signal (default 30). After each kill,
``pyvhdx hash CHILD`` must equal the chain's hash before the merge, and
``pyvhdx merge CHILD`` must finish with the parent holding that content (see
tests/killlib.py). Prints one line per kill and a summary; exits 1 on any failure.

    python tools/merge_kill.py --points 30 --child-mib 512 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests/killlib.py holds the harness (shared with the tests)
    sys.path.insert(0, str(REPO))


def main() -> int:
    from tests.killlib import campaign

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=30, help="kills per signal and format")
    ap.add_argument("--child-mib", type=int, default=512, help="data the child holds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--formats", default="vhdx,vhd", help="comma-separated: vhdx,vhd")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp one)")
    args = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for fmt in args.formats.split(","):
            t0 = time.monotonic()
            outcomes = campaign(Path(tmp) / fmt, "." + fmt, args.child_mib, args.points, args.seed)
            for o in outcomes:
                flag = "ok  " if o.ok else "FAIL"
                print(f"{flag} {fmt:4} {o.signal:7} {o.delay:7.3f}s {o.state:11} {o.detail}")
            tally = collections.Counter((o.signal, o.state) for o in outcomes)
            bad = sum(not o.ok for o in outcomes)
            failures += bad
            print(
                f"== {fmt}: {len(outcomes)} kills, {bad} failed, "
                f"{dict(sorted(tally.items()))}, {time.monotonic() - t0:.0f} s",
                flush=True,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
