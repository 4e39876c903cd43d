"""What the door does with server commands, and what it decides alone while offline.

Online, the door decides nothing: it pulses the relay on a verified ``open`` and stays locked
otherwise. Offline (broker unreachable for longer than the grace period) it follows the
configured fail mode: ``secure`` keeps the door locked and denies, ``safe`` releases the door
until the link is back, ``allowlist`` decides each face alone with the signed offline allow-list
(:mod:`edge_agent.allowlist`): it pulses the relay for a person the list grants and denies
everyone else; without a valid list (none, expired, refused) it behaves as ``secure`` and logs
why. During a lockdown the door stays locked in every mode. Every offline decision is recorded
(attached to the spooled detection, so it is synced when the link returns, and appended to
``offline-decisions.jsonl``) and counted for the heartbeat.

The door's inputs (:meth:`DoorController.attach_inputs`): the request-to-exit button releases the
lock here, at once, online or not, in lockdown too (free egress: a lockdown keeps people out, not
in), and is reported as ``exit_request``; the position sensor's changes are reported as ``opened`` /
``closed`` with whether the relay was released at that moment. The server decides what an opening
was (authorised, forced) and when a door is held open too long.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_agent.allowlist import AllowlistStore
from edge_agent.inputs import DigitalInput
from edge_agent.relay import RelayDriver
from edge_agent.spool import private_dir, private_file
from faceengine.protocol import Command, CommandKind, DoorEventKind, OfflineAction, OfflineDecision, OfflineMode

logger = logging.getLogger(__name__)

FAIL_MODES = ("secure", "safe", "allowlist")
#: offline decision latencies kept (ms, the face emitted -> relay; see :meth:`DoorController.latencies_ms`)
LATENCY_KEEP = 1000


class DoorController:
    def __init__(
        self,
        relay: RelayDriver,
        *,
        fail_mode: str,
        journal: Path | None = None,
        allowlist: AllowlistStore | None = None,
        pulse_ms: int = 3000,
    ) -> None:
        if fail_mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be one of {', '.join(FAIL_MODES)}, got {fail_mode!r}")
        if fail_mode == "allowlist" and allowlist is None:
            raise ValueError("fail_mode allowlist needs an allow-list store")
        self.relay = relay
        self.fail_mode = fail_mode
        self.journal = journal
        self.allowlist = allowlist
        self.pulse_ms = pulse_ms
        self.lockdown = False
        self.online = True
        self.offline_decisions = 0
        self.config: dict[str, object] = {}
        self._latencies: deque[float] = deque(maxlen=LATENCY_KEEP)
        self._lock = threading.Lock()

    @property
    def offline_mode(self) -> OfflineMode:
        """What the door does if the link drops now: ``allowlist`` only while a valid list is held."""
        if self.fail_mode == "allowlist":
            assert self.allowlist is not None
            return OfflineMode.ALLOWLIST if self.allowlist.valid() is not None else OfflineMode.SECURE
        return OfflineMode(self.fail_mode)

    def latencies_ms(self) -> list[float]:
        """Recent offline allow-list decisions: milliseconds from the face emitted to the relay
        (or to the denial), oldest first (a bench reads these)."""
        with self._lock:
            return list(self._latencies)

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
            elif not online and self.fail_mode == "allowlist":
                assert self.allowlist is not None
                held = self.allowlist.valid()
                if held is None:
                    logger.warning(
                        "offline: no valid allow-list (%s); the door stays locked (secure)",
                        self.allowlist.unavailable_reason,
                    )
                else:
                    logger.warning(
                        "offline: deciding alone with allow-list version %d (%d entries)",
                        held.header.version,
                        len(held),
                    )
            else:
                logger.warning("link %s (fail mode %s)", "up" if online else "down", self.fail_mode)

    def decide_offline(
        self,
        detection_id: str,
        *,
        embed: Callable[[], np.ndarray] | None = None,
        liveness: float | None = None,
        started: float | None = None,
    ) -> OfflineDecision | None:
        """The local decision for a detection made while offline (None while online).

        With fail mode ``allowlist``: ``embed`` gives the face's embedding (called only here, only
        when a list decides), ``liveness`` its live score, ``started`` (``time.perf_counter()``)
        when the face was emitted, for the latency measurement.
        """
        latency_ms: float | None = None
        with self._lock:
            if self.online:
                return None
            if self.lockdown:
                decision = OfflineDecision(action=OfflineAction.DENY, basis="lockdown", decided_at=time.time())
            elif self.fail_mode == "safe":
                decision = OfflineDecision(action=OfflineAction.OPEN, basis="fail_safe", decided_at=time.time())
            elif self.fail_mode == "allowlist":
                decision, latency_ms = self._decide_allowlist(embed, liveness, started)
            else:
                decision = OfflineDecision(action=OfflineAction.DENY, basis="fail_secure", decided_at=time.time())
            self._record(decision, detection_id, latency_ms=latency_ms)
            return decision

    def _decide_allowlist(
        self, embed: Callable[[], np.ndarray] | None, liveness: float | None, started: float | None
    ) -> tuple[OfflineDecision, float | None]:
        """The list's decision and its latency in ms (None when no list decided)."""
        assert self.allowlist is not None
        start = time.perf_counter() if started is None else started
        now = self.allowlist.clock()
        if self.allowlist.valid(now) is None:
            logger.warning("offline, no valid allow-list (%s): denied (secure)", self.allowlist.unavailable_reason)
            return OfflineDecision(action=OfflineAction.DENY, basis="fail_secure", decided_at=now), None
        if embed is None:
            logger.warning("offline, no embedding for this face: denied (secure)")
            return OfflineDecision(action=OfflineAction.DENY, basis="fail_secure", decided_at=now), None
        try:
            result = self.allowlist.decide(embed(), at=now, liveness=liveness)
        except Exception:
            logger.exception("offline allow-list decision failed: denied (secure)")
            return OfflineDecision(action=OfflineAction.DENY, basis="fail_secure", decided_at=now), None
        if result is None:  # expired between the two looks
            logger.warning("offline, no valid allow-list (%s): denied (secure)", self.allowlist.unavailable_reason)
            return OfflineDecision(action=OfflineAction.DENY, basis="fail_secure", decided_at=now), None
        if result.granted:
            self.relay.pulse(self.pulse_ms)
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        self._latencies.append(elapsed_ms)
        logger.info(
            "offline allow-list v%d: %s %s (person %s, similarity %s) in %.1f ms",
            result.version,
            "open" if result.granted else "deny",
            result.reason,
            result.person_ref or "-",
            "-" if result.similarity is None else f"{result.similarity:.4f}",
            elapsed_ms,
        )
        decision = OfflineDecision(
            action=OfflineAction.OPEN if result.granted else OfflineAction.DENY,
            basis="allowlist",
            decided_at=now,
            person_ref=result.person_ref,
            reason=result.reason,
            allowlist_version=result.version,
            similarity=result.similarity,
        )
        return decision, elapsed_ms

    def _record(
        self, decision: OfflineDecision, detection_id: str | None = None, *, latency_ms: float | None = None
    ) -> None:
        """Count the decision and journal it (``latency_ms``: the face emitted -> relay, when a list decided)."""
        self.offline_decisions += 1
        if self.journal is not None:
            private_dir(self.journal.parent)
            line = {**decision.to_dict(), "detection_id": detection_id}
            if latency_ms is not None:
                line["latency_ms"] = round(latency_ms, 3)
            with private_file(self.journal).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line, sort_keys=True) + "\n")
        logger.info(
            "offline decision %s (%s%s)",
            decision.action,
            decision.basis,
            f", {decision.reason}" * bool(decision.reason),
        )

    # -- inputs ----------------------------------------------------------------------------

    def attach_inputs(
        self,
        *,
        report: Callable[[DoorEventKind, bool], object],
        sensor: DigitalInput | None = None,
        exit_button: DigitalInput | None = None,
        open_when_active: bool = False,
        exit_pulse_ms: int = 5000,
    ) -> None:
        """Listen to the door's inputs; ``report(kind, released)`` sends each door event (``released``:
        the relay was energised when it happened)."""
        if exit_button is not None:

            def exit_pressed(active: bool) -> None:
                if not active:
                    return
                logger.info("exit request: releasing the lock %d ms", exit_pulse_ms)
                self.relay.pulse(exit_pulse_ms)
                report(DoorEventKind.EXIT_REQUEST, True)

            exit_button.listen(exit_pressed)
        if sensor is not None:

            def position_changed(active: bool) -> None:
                opened = active == open_when_active
                released = self.relay.is_released
                state = "released" if released else "locked"
                logger.info("door %s (relay %s)", "opened" if opened else "closed", state)
                report(DoorEventKind.OPENED if opened else DoorEventKind.CLOSED, released)

            sensor.listen(position_changed)

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
        elif kind in (CommandKind.ALLOWLIST, CommandKind.REVOKE):
            # the agent hands these to the allow-list store with their signed bytes
            logger.info("%s command %s is not a door command", kind, command.command_id)
