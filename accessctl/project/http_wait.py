"""Wait until a URL answers 200: ``python -m accessctl.project.http_wait URL [--timeout S]``.

The web unit's ``ExecStartPost`` (deploy/systemd/accessctl-web.service): systemd counts the web
process as started once its ``/healthz`` answers, so units ordered after it start against a
server that serves. Exits 0 when it answered, 1 at the timeout (the unit then fails and restarts).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request


def http_wait(url: str, *, timeout_s: float, every_s: float = 0.5) -> bool:
    """True as soon as ``url`` answers 200, False once ``timeout_s`` passed without."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=max(0.5, min(5.0, deadline - time.monotonic()))) as response:  # noqa: S310 (the unit's own local URL)
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(every_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    args = parser.parse_args(argv)
    if http_wait(args.url, timeout_s=args.timeout):
        return 0
    print(f"{args.url} did not answer 200 within {args.timeout:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
