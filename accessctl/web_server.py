"""The web process: daphne serving ``accessctl.asgi:application``, with request body limits.

``python -m accessctl.web_server -b HOST -p PORT accessctl.asgi:application`` takes daphne's own
arguments; it installs :func:`accessctl.request_limits.daphne_body_limit_install` first, so a body
over the limit is refused when its headers arrive instead of being read whole (daphne reads a
request's entire body before the application sees it).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "accessctl.settings")
    from daphne.cli import CommandLineInterface

    from accessctl.request_limits import daphne_body_limit_install

    daphne_body_limit_install()
    CommandLineInterface().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
