"""The edge agent: camera -> detect -> liveness -> track -> best crop -> (embed) -> sign -> spool/MQTT;
commands -> relay.

:class:`EdgeAgent` wires the parts; :meth:`EdgeAgent.handle_frame` is the per-frame pipeline
(testable without threads), :meth:`EdgeAgent.run` the main loop, :func:`build_agent` the
factory from an :class:`~edge_agent.config.EdgeConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.allowlist import AllowlistStore
from edge_agent.camera import CameraSource, Frame, open_camera
from edge_agent.config import EdgeConfig
from edge_agent.door import DoorController
from edge_agent.factor_input import make_factor_readers
from edge_agent.inputs import DigitalInput, make_input
from edge_agent.liveness import EdgeLiveness, LivenessEvidence, liveness_load
from edge_agent.model_update import ModelUpdater, SampleCrops, UpdateStatus
from edge_agent.mqtt import EdgeLink
from edge_agent.relay import RelayDriver, make_relay
from edge_agent.spool import Spool
from edge_agent.tracker import Emission, IouTracker
from edge_agent.vision import FaceCandidate, FaceDetector, FilterWatch, LocalEmbedder, encode_jpeg, prepare
from faceengine.protocol import (
    Command,
    CommandKind,
    Detection,
    DoorEvent,
    DoorEventKind,
    Heartbeat,
    ModelUpdateState,
    ProtocolError,
    Reason,
    SecondFactor,
    SecondFactorKind,
    TrackProbe,
    detections_topic,
    door_topic,
    heartbeat_topic,
    load_private_key,
    new_id,
    seal,
)

logger = logging.getLogger(__name__)

_THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")


def read_temperature() -> float | None:
    """SoC temperature in degrees C where the kernel exposes it (Raspberry Pi, Jetson), else None."""
    try:
        return int(_THERMAL.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


class EdgeAgent:
    def __init__(
        self,
        config: EdgeConfig,
        *,
        camera: CameraSource | None,
        detector: FaceDetector | None,
        relay: RelayDriver,
        embedder: LocalEmbedder | None = None,
        private_key: Any = None,
        liveness: EdgeLiveness | None = None,
        allowlist_embedder: LocalEmbedder | None = None,
        door_sensor: DigitalInput | None = None,
        exit_button: DigitalInput | None = None,
    ) -> None:
        self.config = config
        self.camera = camera
        self.detector = detector
        #: the embedder detections use (embedding mode); swapped whole by :meth:`switch_embedder`
        self._embedder = embedder
        #: None: liveness off (or its networks did not load); detections carry no live score
        self.liveness = liveness
        if config.detection.mode == "embedding" and embedder is None:
            raise ValueError("embedding mode needs an embedder")
        self.private_key = load_private_key(
            private_key if private_key is not None else config.device.private_key_path.read_text()
        )
        self.uid = config.device.uid
        self.spool = Spool(config.spool.dir, max_entries=config.spool.max_entries)
        #: model offers (embedding mode): the last faces sent are the new model's self-test
        self.samples = SampleCrops(keep=config.models.self_test_samples)
        self.model_updater: ModelUpdater | None = None
        self._model_refused: UpdateStatus | None = None  # an offer a crop-mode agent cannot take
        if config.detection.mode == "embedding":
            m = config.models
            self.model_updater = ModelUpdater(
                m.dir,
                device_uid=self.uid,
                private_key=self.private_key,
                server_public_key=config.device.server_public_key,
                agent_version=__version__,
                current=lambda: self._embedder,
                switch=self.switch_embedder,
                samples=self.samples,
                on_progress=self._model_progress,
                threads=config.detection.threads,
                min_samples=m.self_test_min_samples,
                timeout_s=m.download_timeout_s,
                tls_ca=m.tls_ca,
            )
            restored = self.model_updater.restore()
            if restored is not None:  # the model chosen before the restart (its bundle verified again)
                if self.model_updater.previous is None:  # else: an earlier bundle, what a rollback returns to
                    self.model_updater.previous = embedder
                self._embedder = embedder = restored
        #: what embeds a face for the offline allow-list: the detection embedder in embedding mode
        #: (embed once), else the one loaded for the list at start (crop mode)
        self.list_embedder = embedder if config.detection.mode == "embedding" else allowlist_embedder
        self.allowlist: AllowlistStore | None = None
        if config.door.fail_mode == "allowlist":
            if self.list_embedder is None:
                logger.error("fail mode allowlist without an embedder: every allow-list is refused (secure)")
            self.allowlist = AllowlistStore(
                config.spool.dir,
                device_uid=self.uid,
                server_public_key=config.device.server_public_key,
                private_key=self.private_key,
                model_version=self.list_embedder.model_version if self.list_embedder is not None else None,
                on_change=self._allowlist_changed,
            )
            self.allowlist.load()
        self.door = DoorController(
            relay,
            fail_mode=config.door.fail_mode,
            journal=config.spool.dir / "offline-decisions.jsonl",
            allowlist=self.allowlist,
            pulse_ms=config.door.pulse_ms,
        )
        self.door_sensor, self.exit_button = door_sensor, exit_button
        self.door_events_sent = 0
        self._factor: SecondFactor | None = None
        #: keypad / card readers (edge_agent.factor_input, edge_agent.wiegand): started and closed with the agent
        self.factor_readers: list[Any] = []
        self._factor_lock = threading.Lock()
        if door_sensor is not None or exit_button is not None:
            self.door.attach_inputs(
                report=self.report_door_event,
                sensor=door_sensor,
                exit_button=exit_button,
                open_when_active=config.inputs.door_open_when_active,
                exit_pulse_ms=config.inputs.exit_pulse_ms,
            )
        self.command_listeners: list[Callable[[Command], None]] = []
        self.link = EdgeLink(
            config.mqtt,
            device_uid=self.uid,
            private_key=self.private_key,
            server_public_key=config.device.server_public_key,
            spool=self.spool,
            agent_version=__version__,
            on_command=self._on_command,
        )
        d = config.detection
        self.tracker: IouTracker[FaceCandidate] = IouTracker(
            iou_threshold=d.iou_threshold,
            max_dwell_s=d.max_dwell_s,
            timeout_s=d.track_timeout_s,
            evidence=lambda candidate: candidate.liveness,  # every frame's live score stays on the track
            keep_best=d.track_probes,  # the best faces of a track go to the server together
        )
        self.filter_watch = FilterWatch(min_face_px=d.min_face_px, min_score=d.min_detector_score)
        self.started_at = time.monotonic()
        self.detections_sent = 0
        self.bytes_sent = 0
        self.camera_fps = 0.0
        self._last_frame_ts: float | None = None
        self._last_heartbeat = 0.0
        self._stop = threading.Event()
        self._stopped = False
        self._supervisor = threading.Thread(target=self._supervise, name="edge-supervisor", daemon=True)
        # allow-list commands are applied in order on their own thread: a 10,000-person full list
        # takes seconds to verify and compile, and must not hold up door commands on the link
        self._allowlist_inbox: queue.SimpleQueue[tuple[Command, bytes] | None] = queue.SimpleQueue()
        self._allowlist_busy = 0
        self._allowlist_idle = threading.Condition()
        self._allowlist_worker: threading.Thread | None = None
        if self.allowlist is not None:
            self._allowlist_worker = threading.Thread(target=self._allowlist_loop, name="edge-allowlist", daemon=True)
            self._allowlist_worker.start()

    # -- the embedder and model updates ---------------------------------------------------

    @property
    def embedder(self) -> LocalEmbedder | None:
        return self._embedder

    def switch_embedder(self, new: LocalEmbedder) -> None:
        """Make ``new`` the embedder of every detection from now on (one assignment: a detection
        reads it once, so it is never half old, half new). The offline allow-list held for the old
        model no longer matches: the door waits for the new model's list (the heartbeat reports the
        new model and the server compiles it)."""
        self._embedder = new
        if self.config.detection.mode == "embedding":
            self.list_embedder = new
            if self.allowlist is not None:
                self.allowlist.model_set(new.model_version)

    def _model_progress(self) -> None:
        """A model update moved on: say so at once (heartbeat) when the link is up."""
        if self.link.connected:
            self.send_heartbeat()

    # -- pipeline --------------------------------------------------------------------------

    def handle_frame(self, frame: Frame) -> list[Detection]:
        """Detect, score liveness, track and emit: returns the detections this frame completed (usually none)."""
        self._measure_fps(frame.ts)
        assert self.detector is not None
        d = self.config.detection
        candidates = prepare(
            frame.rgb,
            self.detector.detect(frame.rgb),
            min_face_px=d.min_face_px,
            min_score=d.min_detector_score,
            tally=self.filter_watch.tally,
        )
        self.filter_watch.frame_done(frame.ts)
        candidates = self.score_liveness(frame.rgb, candidates)
        emissions = self.tracker.update([(c.face.box, c.rank, c) for c in candidates], frame.ts)
        return [self.emit(e) for e in emissions]

    def score_liveness(self, rgb: Any, candidates: list[FaceCandidate]) -> list[FaceCandidate]:
        """The frame's candidates with their live scores (all boxes in one batch; unchanged when
        liveness is off, None where the scorer failed)."""
        if self.liveness is None or not candidates:
            return candidates
        scores = self.liveness.score_frame(rgb, [c.face.box for c in candidates])
        return [dataclasses.replace(c, liveness=s) for c, s in zip(candidates, scores, strict=True)]

    def fuse_liveness(self, scores: tuple[float, ...] | list[float]) -> LivenessEvidence | None:
        """A track's liveness evidence from its frame scores (None: off, or no frame scored)."""
        return self.liveness.fuse(scores) if self.liveness is not None else None

    def emit(self, emission: Emission[FaceCandidate]) -> Detection:
        """Turn a track's best observation into a signed detection and queue it."""
        extra = {"frames": float(emission.frames), "dwell_s": round(emission.dwell_s, 3)}
        return self.send_candidate(
            emission.item,
            captured_at=emission.captured_at,
            extra_quality=extra,
            liveness=self.fuse_liveness(emission.evidence),
            others=emission.others,
        )[0]

    def end_tracks(self) -> list[Detection]:
        """Every face left the view (the camera ended, or a simulated visitor left): emit what is owed."""
        return [self.emit(emission) for emission in self.tracker.flush()]

    def send_candidate(
        self,
        candidate: FaceCandidate,
        *,
        captured_at: float,
        extra_quality: dict[str, float] | None = None,
        liveness: LivenessEvidence | None = None,
        others: Sequence[FaceCandidate] = (),
    ) -> tuple[Detection, int]:
        """Build, sign and queue one detection; returns it and the size of the signed message.
        ``others``: the track's next best faces, sent with it as track probes."""
        detection = self.build_detection(
            candidate,
            captured_at=captured_at,
            extra_quality=extra_quality,
            liveness=liveness,
            started=time.perf_counter(),
            others=others,
        )
        try:
            raw = seal(detection, self.private_key)
        except ProtocolError as exc:
            if exc.code is not Reason.TOO_LARGE or not detection.track_probes:
                raise
            # Large crops: the best face alone still fits (each crop is bounded); never send nothing.
            logger.warning("detection %s too large with %d track probes; sent without them", detection.detection_id,
                           len(detection.track_probes))  # fmt: skip
            detection = dataclasses.replace(detection, track_probes=())
            raw = seal(detection, self.private_key)
        self.link.send(detections_topic(self.uid), raw, detection_id=detection.detection_id)
        if self.model_updater is not None and detection.embedding is not None:
            # one face per track: the next model's self-test, with the vector the running model gave it
            self.samples.add(candidate, detection.embedding_values(), detection.model_version)
            self.model_updater.faces_seen()  # an offer waiting for enough faces to self-test goes on
        self.detections_sent += 1
        self.bytes_sent += len(raw)
        logger.info(
            "detection %s queued: %d bytes (%s mode, %s), spool depth %d, liveness %s over %s frame(s)",
            detection.detection_id,
            len(raw),
            detection.mode,
            "online" if self.link.connected else "offline",
            len(self.spool),
            "-" if detection.liveness is None else f"{detection.liveness:.4f}",
            detection.liveness_frames or 0,
        )
        return detection, len(raw)

    def build_detection(
        self,
        candidate: FaceCandidate,
        *,
        captured_at: float,
        extra_quality: dict[str, float] | None = None,
        liveness: LivenessEvidence | None = None,
        started: float | None = None,
        others: Sequence[FaceCandidate] = (),
    ) -> Detection:
        """The signed-to-be detection, with the door's offline decision when the link is down
        (``started``: ``time.perf_counter()`` when the face was emitted, for the latency)."""
        face = candidate.face
        detection_id = new_id()
        self._update_link_state()
        vector = None
        embedder = self._embedder  # read once: every vector of this detection comes from one model
        if self.config.detection.mode == "embedding":
            assert embedder is not None
            vector = embedder.embed(candidate)  # once: for the detection and the allow-list

        def embed() -> Any:
            if vector is not None:
                return vector
            if self.list_embedder is None:
                raise RuntimeError("no embedder for the allow-list")
            return self.list_embedder.embed(candidate)

        offline = self.door.decide_offline(
            detection_id,
            embed=embed,
            liveness=liveness.score if liveness is not None else None,
            started=started,
        )
        fields: dict[str, Any] = {
            "device_uid": self.uid,
            "detection_id": detection_id,
            "captured_at": captured_at,
            "sent_at": time.time(),
            "detector_score": min(1.0, max(0.0, float(face.score))),
            "box": tuple(round(v) for v in face.box),
            "quality": {**candidate.quality, **(extra_quality or {})},
            "offline_decision": offline,
            "second_factor": self._factor_take(),
            **(liveness.detection_fields() if liveness is not None else {}),
        }
        others = list(others)[: self.config.detection.track_probes - 1]
        if vector is not None:
            assert embedder is not None
            if others:
                fields["track_probes"] = tuple(
                    TrackProbe.with_embedding(
                        values=embedder.embed(other),
                        encoding=self.config.detection.embedding_encoding,
                        quality=other.quality,
                    )
                    for other in others
                )
            return Detection.with_embedding(
                values=vector,
                model_version=embedder.model_version,
                encoding=self.config.detection.embedding_encoding,
                **fields,
            )
        quality = self.config.detection.jpeg_quality
        if others:
            fields["track_probes"] = tuple(
                TrackProbe(quality=other.quality, crop_jpeg=encode_jpeg(other.crop, quality)) for other in others
            )
        return Detection.with_crop(jpeg=encode_jpeg(candidate.crop, quality), **fields)

    def factor_enter(self, kind: SecondFactorKind | str, value: str) -> SecondFactor:
        """A PIN typed on the keypad or a card read (a keypad or card-reader driver calls this): it goes,
        signed, with the next face detected within ``inputs.factor_window_s``, once."""
        factor = SecondFactor(kind=SecondFactorKind(kind), value=value, entered_at=time.time())
        SecondFactor.from_dict(factor.to_dict())  # the protocol's rules (digits, length) before it is kept
        with self._factor_lock:
            self._factor = factor
        logger.info("second factor entered (%s)", factor.kind)
        return factor

    def _factor_take(self) -> SecondFactor | None:
        with self._factor_lock:
            factor, self._factor = self._factor, None
        if factor is not None and time.time() - factor.entered_at > self.config.inputs.factor_window_s:
            logger.info("second factor (%s) expired before a face was seen", factor.kind)
            return None
        return factor

    def report_door_event(self, kind: DoorEventKind, released: bool) -> DoorEvent:
        """Sign and queue (spooled, in order with the detections) one door event."""
        now = time.time()
        event = DoorEvent(
            device_uid=self.uid, event_id=new_id(), kind=kind, occurred_at=now, sent_at=now, released=released
        )
        self.link.send(door_topic(self.uid), seal(event, self.private_key))
        self.door_events_sent += 1
        logger.info("door event %s %s queued (relay %s)", event.event_id, kind, "released" if released else "locked")
        return event

    def _measure_fps(self, ts: float) -> None:
        if self._last_frame_ts is not None and ts > self._last_frame_ts:
            instant = 1.0 / (ts - self._last_frame_ts)
            self.camera_fps = instant if self.camera_fps == 0 else 0.9 * self.camera_fps + 0.1 * instant
        self._last_frame_ts = ts

    # -- commands, link state, heartbeat ---------------------------------------------------

    def _on_command(self, command: Command, raw: bytes) -> None:
        if command.command in (CommandKind.MODEL_OFFER, CommandKind.MODEL_ROLLBACK):
            if self.model_updater is not None:
                self.model_updater.receive(command)
            else:  # crop mode: the server embeds; say so, so that the rollout shows why nothing happens
                logger.warning("%s command %s ignored: not in embedding mode", command.command, command.command_id)
                offered = command.data.get("manifest", {})
                version = offered.get("manifest", {}).get("model_version") if isinstance(offered, dict) else None
                if command.command is CommandKind.MODEL_OFFER and isinstance(version, str) and version:
                    self._model_refused = UpdateStatus(version[:64], ModelUpdateState.FAILED, "not_embedding_mode")
                    self._model_progress()
        elif command.command in (CommandKind.ALLOWLIST, CommandKind.REVOKE):
            if self.allowlist is not None:
                with self._allowlist_idle:
                    self._allowlist_busy += 1
                self._allowlist_inbox.put((command, raw))
            else:
                logger.warning(
                    "%s command %s ignored: fail mode is %s, not allowlist",
                    command.command,
                    command.command_id,
                    self.config.door.fail_mode,
                )
        else:
            self.door.apply(command)
        for listener in self.command_listeners:
            listener(command)

    def _update_link_state(self) -> None:
        online = self.link.connected or self.link.offline_for() < self.config.door.offline_grace_s
        self.door.set_online(online)

    def _allowlist_loop(self) -> None:
        assert self.allowlist is not None
        while (item := self._allowlist_inbox.get()) is not None:
            try:
                self.allowlist.receive(*item)
            except Exception:
                logger.exception("allow-list command %s failed", item[0].command_id)
            finally:
                with self._allowlist_idle:
                    self._allowlist_busy -= 1
                    self._allowlist_idle.notify_all()

    def wait_allowlist_applied(self, timeout: float) -> bool:
        """Block until every allow-list command received so far was handled (tests, benches)."""
        with self._allowlist_idle:
            return self._allowlist_idle.wait_for(lambda: self._allowlist_busy == 0, timeout)

    def _allowlist_changed(self) -> None:
        """A version or a revocation was applied: acknowledge it at once with a heartbeat."""
        if self.link.connected:
            self.send_heartbeat()

    def heartbeat(self) -> Heartbeat:
        now = time.time()
        overdue, oldest = self.spool.overdue(now, timeout_s=self.config.mqtt.decision_timeout_s)
        held = self.allowlist.status() if self.allowlist is not None else None
        update = self.model_updater.status if self.model_updater is not None else self._model_refused
        return Heartbeat(
            device_uid=self.uid,
            sent_at=now,
            agent_version=__version__,
            # the model this device embeds with (crop mode: the allow-list's, when it has one), which
            # the server compiles the allow-list's templates for
            model_version=self.list_embedder.model_version if self.list_embedder is not None else None,
            camera_fps=round(min(self.camera_fps, 1000.0), 2),
            spool_depth=len(self.spool),
            spool_dropped=self.spool.dropped,
            uptime_s=round(time.monotonic() - self.started_at, 1),
            temperature_c=read_temperature(),
            detections_sent=self.detections_sent,
            bytes_per_detection=round(self.bytes_sent / self.detections_sent, 1) if self.detections_sent else None,
            offline_decisions=self.door.offline_decisions,
            lockdown=self.door.lockdown,
            awaiting_answer=self.spool.awaiting,
            unanswered=self.spool.unanswered,
            answers_overdue=overdue,
            oldest_overdue_s=oldest,
            allowlist_version=held.version if held is not None else None,
            allowlist_expires_at=held.expires_at if held is not None else None,
            allowlist_entries=held.entries if held is not None else None,
            revocation_seq=held.revocation_seq if held is not None else None,
            offline_mode=self.door.offline_mode,
            model_update_version=update.model_version if update is not None else None,
            model_update_state=update.state if update is not None else None,
            model_update_reason=update.reason if update is not None else None,
        )

    def send_heartbeat(self) -> bool:
        hb = self.heartbeat()
        logger.info(
            "heartbeat: fps %.1f, spool %d (dropped %d), %d detections, %s bytes/detection, %d answers overdue",
            hb.camera_fps,
            hb.spool_depth,
            hb.spool_dropped,
            hb.detections_sent,
            hb.bytes_per_detection,
            hb.answers_overdue or 0,
        )
        return self.link.publish_now(heartbeat_topic(self.uid), seal(hb, self.private_key))

    def _supervise(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self._update_link_state()
                now = time.monotonic()
                if self.link.connected and now - self._last_heartbeat >= self.config.agent.heartbeat_interval_s:
                    self._last_heartbeat = now
                    self.send_heartbeat()
            except Exception:
                logger.exception("supervisor error")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the MQTT link and the supervisor (heartbeats, offline policy)."""
        self.link.start()
        self._supervisor.start()
        for reader in self.factor_readers:
            reader.start()

    def request_stop(self) -> None:
        """Ask :meth:`run` to finish after the current frame (safe from a signal handler)."""
        self._stop.set()
        if self.camera is not None:
            self.camera.close()

    def stop(self) -> None:
        """Flush pending tracks into the spool, say offline, close everything (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self.camera is not None:
            self.camera.close()
        self.end_tracks()
        if self._supervisor.is_alive():
            self._supervisor.join(2)
        self.link.stop()
        if self.model_updater is not None:
            self.model_updater.close()
        if self._allowlist_worker is not None:
            self._allowlist_inbox.put(None)
            self._allowlist_worker.join(10)
        for door_input in (self.door_sensor, self.exit_button):
            if door_input is not None:
                door_input.close()
        for reader in self.factor_readers:
            reader.close()
        self.door.relay.close()
        self.spool.close()

    def run(self) -> None:
        """Process camera frames until the camera ends or :meth:`stop` is called."""
        assert self.camera is not None
        self.start()
        try:
            for frame in self.camera.frames():
                if self._stop.is_set():
                    break
                try:
                    self.handle_frame(frame)
                except Exception:
                    logger.exception("frame %d failed", frame.index)
        finally:
            total = self.filter_watch.finish()
            logger.info("camera stopped: %d frame(s), %d detection(s) sent", total.frames, self.detections_sent)
            self.stop()


def build_agent(config: EdgeConfig) -> EdgeAgent:
    """The production wiring: real camera, configured detector, relay (and embedder)."""
    from edge_agent.vision import detector_build

    c, d = config.camera, config.detection
    camera = open_camera(
        c.source,
        width=c.width,
        height=c.height,
        max_fps=c.max_fps,
        folder_repeat=c.folder_repeat,
        folder_loop=c.folder_loop,
    )
    relay = make_relay(config.relay.driver, gpio_pin=config.relay.gpio_pin, active_high=config.relay.active_high)
    embedder = LocalEmbedder(d.embedder, threads=d.threads) if d.mode == "embedding" else None
    # crop mode with an offline allow-list: load the list's model now, not at the first offline face
    list_embedder = (
        LocalEmbedder(d.embedder, threads=d.threads)
        if d.mode == "crop" and config.door.fail_mode == "allowlist"
        else None
    )
    agent = EdgeAgent(
        config,
        camera=camera,
        detector=detector_build(d.detector, min_face_px=d.min_face_px, threads=d.threads),
        relay=relay,
        embedder=embedder,
        liveness=agent_liveness(config),
        allowlist_embedder=list_embedder,
        door_sensor=make_input(
            config.inputs.driver,
            "door_sensor",
            config.inputs.door_sensor_pin,
            pull_up=config.inputs.pull_up,
            active=not config.inputs.door_open_when_active,  # simulated: the door starts shut
        ),
        exit_button=make_input(
            config.inputs.driver, "exit_button", config.inputs.exit_button_pin, pull_up=config.inputs.pull_up
        ),
    )
    agent.factor_readers = make_factor_readers(config.inputs, agent.factor_enter)
    return agent


def agent_liveness(config: EdgeConfig) -> EdgeLiveness | None:
    """The ``[liveness]`` section's scorer (None when off or when the networks do not load)."""
    live = config.liveness
    return liveness_load(
        enabled=live.enabled,
        threads=live.threads,
        fuse_top_k=live.fuse_top_k,
        boxes=live.resolved_boxes(config.detection.detector),
        fusion=live.fusion,
    )
