"""Lower the CPU priority of a background worker process (gallery builds, shadow decisions).

A process's nice value only weighs against the processes of its own scheduling group. On Linux
with autogroup (``/proc/sys/kernel/sched_autogroup_enabled``, the default of most desktop and many
server kernels) every session is a group of its own, and ``manage.py up`` starts each worker in a
session of its own (``start_new_session``): the niced gallery worker then competed with the
decision worker, the bridge and PostgreSQL as an equal. Measured with ``bench/model_promotion.py``
(2 cores, 50 decisions/s): the gallery worker at nice 10 took 42-59 % of a core while decisions
queued for seconds. The autogroup has a nice value of its own (``/proc/self/autogroup``), which
does weigh against the other groups; it is set here too, but only when the session is this
worker's alone (the Celery main process, or this process, leads it), never a shell's or a
supervisor's shared with the decision workers. Under systemd each unit is a cgroup of its own
(autogroups do not apply there); its ``CPUWeight=`` does the same (``deploy/systemd``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


@dataclass(frozen=True)
class Priority:
    """What :func:`background_priority_lower` left the process with (None: not available)."""

    nice: int
    autogroup_nice: int | None


def _autogroup_nice(path: Path) -> int | None:
    try:
        text = path.read_text()  # "/autogroup-138 nice 0"
    except OSError:
        return None
    parts = text.split()
    try:
        return int(parts[parts.index("nice") + 1])
    except (ValueError, IndexError):
        return None


def session_is_own(pid: int | None = None, ppid: int | None = None, sid: int | None = None) -> bool:
    """True when this process's session is led by itself or by its parent (a Celery main process
    started in a session of its own): raising the session's autogroup nice then slows nothing else."""
    pid = os.getpid() if pid is None else pid
    ppid = os.getppid() if ppid is None else ppid
    sid = os.getsid(0) if sid is None else sid
    return sid in (pid, ppid)


def autogroup_nice_raise(wanted: int, *, own_session: bool, autogroup: Path = AUTOGROUP) -> int | None:
    """Raise the nice value of this process's autogroup to ``wanted`` when the session is its own
    (``own_session``); returns the autogroup's nice value afterwards (None: no autogroups here)."""
    group = _autogroup_nice(autogroup)
    if group is None or wanted <= group or not own_session:
        return group
    try:
        autogroup.write_text(str(wanted))
    except OSError as exc:  # a kernel without the knob, or a sandbox refusing it
        logger.info("could not set the autogroup nice to %d: %s", wanted, exc)
    return _autogroup_nice(autogroup)


def background_priority_lower(nice: int) -> Priority:
    """Raise this process's nice value to ``nice`` (0..19; never lowers it: systemd's ``Nice=`` may
    have set more) and, where the kernel groups by session and the session is this worker's own,
    its autogroup's nice value too (module docstring)."""
    wanted = max(0, min(19, int(nice)))
    if wanted > os.nice(0):
        os.nice(wanted - os.nice(0))
    return Priority(nice=os.nice(0), autogroup_nice=autogroup_nice_raise(wanted, own_session=session_is_own()))
