"""What the door does with server commands, and what it decides alone while offline.

Online, the door decides nothing: it pulses the relay on a verified ``open`` and stays locked
otherwise. Offline (broker unreachable for longer than the grace period) it follows the
configured fail mode: ``secure`` keeps the door locked and denies, ``safe`` releases the door
until the link is back. During a lockdown the door stays locked in both cases. Every offline
decision is recorded (attached to the spooled detection, so it is synced when the link returns,
and appended to ``offline-decisions.jsonl``) and counted for the heartbeat.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from edge_agent.relay import RelayDriver
from edge_agent.spool import private_dir, private_file
from faceengine.protocol import Command, CommandKind, OfflineAction, OfflineDecision

logger = logging.getLogger(__name__)


class DoorController:
    def __init__(self, relay: RelayDriver, *, fail_mode: str, journal: Path | None = None) -> None:
        if fail_mode not in ("secure", "safe"):
            raise ValueError(f"fail_mode must be secure or safe, got {fail_mode!r}")
        self.relay = relay
        self.fail_mode = fail_mode
        self.journal = journal
        self.lockdown = False
        self.online = True
        self.offline_decisions = 0
        self.config: dict[str, object] = {}
        self.allowlist: dict[str, object] | None = None
        self._lock = threading.Lock()

    # -- link state ------------------------------------------------------------------------

    def set_online(self, online: bool) -> None:
        """Called when the link state settles (after the offline grace period)."""
        with self._lock:
            if online == self.online:
                return
            self.online = online
            if not online and self.fail_mode == "safe" and not self.lockdown:
                logger.warning("offline: fail-safe, releasing the door until the link returns")
                self.relay.hold_open()
                self._record(OfflineDecision(action=OfflineAction.OPEN, basis="fail_safe", decided_at=time.time()))
            elif online and self.relay.held_open:
                logger.info("online again: locking the door")
                self.relay.lock()
            else:
                logger.warning("link %s (fail mode %s)", "up" if online else "down", self.fail_mode)

    def decide_offline(self, detection_id: str) -> OfflineDecision | None:
        """The local decision for a detection made while offline (None while online)."""
        with self._lock:
            if self.online:
                return None
            if self.lockdown:
                decision = OfflineDecision(action=OfflineAction.DENY, basis="lockdown", decided_at=time.time())
            elif self.fail_mode == "safe":
                decision = OfflineDecision(action=OfflineAction.OPEN, basis="fail_safe", decided_at=time.time())
            else:
                decision = OfflineDecision(action=OfflineAction.DENY, basis="fail_secure", decided_at=time.time())
            self._record(decision, detection_id)
            return decision

    def _record(self, decision: OfflineDecision, detection_id: str | None = None) -> None:
        self.offline_decisions += 1
        if self.journal is not None:
            private_dir(self.journal.parent)
            line = {**decision.to_dict(), "detection_id": detection_id}
            with private_file(self.journal).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line, sort_keys=True) + "\n")
        logger.info("offline decision %s (%s)", decision.action, decision.basis)

    # -- commands --------------------------------------------------------------------------

    def apply(self, command: Command) -> None:
        """Carry out a verified server command."""
        kind = command.command
        if kind is CommandKind.OPEN:
            logger.info(
                "open %d ms (command %s, detection %s)", command.pulse_ms, command.command_id, command.detection_id
            )
            self.relay.pulse(command.pulse_ms)
        elif kind is CommandKind.DENY:
            logger.info("deny %s (command %s, detection %s)", command.reason, command.command_id, command.detection_id)
        elif kind is CommandKind.LOCKDOWN:
            with self._lock:
                self.lockdown = True
                self.relay.lock()
            logger.warning("lockdown (command %s)", command.command_id)
        elif kind is CommandKind.LIFT_LOCKDOWN:
            with self._lock:
                self.lockdown = False
            logger.warning("lockdown lifted (command %s)", command.command_id)
        elif kind is CommandKind.CONFIG:
            self.config.update(command.data)
            logger.info("config update %s (command %s)", sorted(command.data), command.command_id)
        elif kind is CommandKind.ALLOWLIST:
            self.allowlist = dict(command.data)
            logger.info("offline allow-list received (command %s)", command.command_id)
