"""`make bench`: every benchmark, each printing its own table of figures measured side by side.

Each module in this folder with a `main()` is one benchmark; `python -m bench NAME...` runs some.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = argv or available()
    failed = []
    for name in names:
        print(f"\n=== bench: {name} ===", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        try:
            module.main()
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            failed.append(name)
            print(f"bench {name} failed: {exc!r}", flush=True)
        print(f"({name}: {time.perf_counter() - started:.1f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
