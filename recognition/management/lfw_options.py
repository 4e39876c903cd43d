"""The ``--lfw-root``/``--lfw`` option shared by the commands that read LFW."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import CommandError, CommandParser

from recognition.datasets import DatasetError, lfw_locate


def lfw_option_add(parser: CommandParser) -> None:
    parser.add_argument(
        "--lfw-root",
        "--lfw",
        default=None,
        metavar="PATH",
        help="LFW folder (default: ACCESSCTL_LFW, else var/datasets/lfw, downloaded there once)",
    )


def lfw_root_locate(named: str | None) -> Path:
    """The LFW folder (see :func:`recognition.datasets.lfw_locate`); a command error when there is none."""
    try:
        return lfw_locate(explicit=named, stream=sys.stderr)
    except DatasetError as exc:
        raise CommandError(str(exc)) from exc
