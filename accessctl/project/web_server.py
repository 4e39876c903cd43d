"""The web process: daphne serving ``accessctl.project.asgi:application``, with request body limits.

``python -m accessctl.project.web_server -b HOST -p PORT accessctl.project.asgi:application`` takes daphne's own
arguments; it installs :func:`accessctl.project.request_limits.daphne_body_limit_install` first, so a body
over the limit is refused when its headers arrive instead of being read whole (daphne reads a
request's entire body before the application sees it).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "accessctl.project.settings")
    from daphne.cli import CommandLineInterface

    from accessctl.project.request_limits import daphne_body_limit_install

    daphne_body_limit_install()
    CommandLineInterface().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
