"""The top functions by own time of the main thread, from a py-spy raw profile.

    py-spy record -r 1000 -f raw --threads -o fanout.raw -- \\
        python bench/fanout.py --only tocsin -n 20000
    python bench/pyspy_top.py fanout.raw          # top 15 by own time, share of main-thread samples

The lines are ``share  function (file:line)``; the last line is the one-line summary
(``pyspy_top: samples=… idle=…``), ``idle`` being the share spent waiting in the selector.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def main(path: Path, top: int) -> None:
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "MainThread" not in frames[0]:
            continue
        samples = int(count)
        total += samples
        # One entry per function, whatever the line inside it.
        function, _, where = frames[-1].partition(" (")
        own[f"{function} ({where.rsplit(':', 1)[0]})"] += samples
    for function, samples in own.most_common(top):
        print(f"{samples / total:6.1%}  {function}")
    idle = sum(v for k, v in own.items() if k.startswith("EpollSelector.select"))
    print(f"pyspy_top: samples={total} idle={idle / max(total, 1):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    main(args.profile, args.top)
