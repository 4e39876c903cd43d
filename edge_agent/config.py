"""Edge agent configuration: a TOML file (``tomllib``) plus ``ACS_EDGE_<SECTION>_<KEY>`` overrides.

Every setting lives in one section dataclass below; the TOML file uses the same section and key
names (see ``config.example.toml``), and an environment variable overrides one key, e.g.
``ACS_EDGE_MQTT_URL=mqtts://...`` or ``ACS_EDGE_DOOR_FAIL_MODE=safe``. Values from the environment
are parsed according to the field type. Missing required values fail fast with a clear message.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from faceengine.protocol import (
    DEFAULT_TRACK_PROBES,
    MAX_TRACK_PROBES,
    MIN_FACE_PX,
    ProtocolError,
    validate_device_uid,
)
from faceengine.registry import available_backends

ENV_PREFIX = "ACS_EDGE_"
DEFAULT_VAR_DIR = Path("var/edge")


class ConfigError(ValueError):
    """The configuration is incomplete or invalid."""


@dataclass
class DeviceSection:
    uid: str = ""
    #: PEM (or base64 raw) Ed25519 private key of this device, mode 0600
    private_key_path: Path = DEFAULT_VAR_DIR / "device.key"
    #: base64 raw Ed25519 public key of the server (verifies commands)
    server_public_key: str = ""


@dataclass
class MqttSection:
    #: mqtt://host:1883 or mqtts://host:8883 (AWS IoT Core: mqtts://<prefix>-ats.iot.<region>.amazonaws.com:8883)
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    #: messages handed to the MQTT client before waiting for acknowledgements
    max_inflight: int = 10
    #: accept commands issued at most this far from the device clock
    command_window_s: float = 30.0
    #: a detection the broker accepted but the server never answered is sent again (signed anew)
    #: after this long, then after twice as long, and so on ...
    decision_timeout_s: float = 3.0
    #: ... until this long after it was first accepted (keep it under the server's timestamp
    #: window, DEVICE_TIMESTAMP_WINDOW_S = 30 s: later the server would deny it as stale anyway)
    resend_window_s: float = 15.0
    #: a detection the door decided alone (it carries ``offline_decision``) is a record the access
    #: log must get: the server accepts it whatever its age and ignores copies, so it is re-sent
    #: (same back-off) for this long instead: long enough for the server's bridge to come back
    #: after the broker did (a broker restart may lose the bridge's session and what it queued)
    offline_resend_window_s: float = 600.0
    #: connected, yet no answer to any detection for this long while answers are overdue: the
    #: broker may have stopped delivering the commands subscription; reconnect (subscribing again),
    #: then wait twice as long before the next time, up to 10 minutes. 0 disables.
    unanswered_reconnect_s: float = 10.0


@dataclass
class CameraSection:
    #: 0 or /dev/video0 (V4L2), rtsp://..., http(s)://... (MJPEG), a video file, a folder of images,
    #: or inbox:DIR (visitors dropped into DIR while the agent runs; tests and benches)
    source: str = "0"
    width: int = 640
    height: int = 480
    #: frames per second to process at most (0 = as fast as possible)
    max_fps: float = 10.0
    #: for folder and inbox sources: frames shown per image (a visitor stays in view this long)
    folder_repeat: int = 1
    folder_loop: bool = False


@dataclass
class DetectionSection:
    #: smaller faces are not sent (the server would deny them as low_quality): the shared rule
    min_face_px: int = MIN_FACE_PX
    min_detector_score: float = 0.9
    #: crop (aligned JPEG leaves the device) or embedding (privacy mode: only the vector leaves)
    mode: str = "crop"
    #: the embedder backend (embedding mode, and the offline allow-list): ``sface`` (float, the
    #: server's default) or ``sface-int8`` (the same network in int8, its own model version: same
    #: LFW accuracy, no faster than ``sface`` on an x86 CPU; see the README), or a FaceNet backend
    embedder: str = "sface"
    embedding_encoding: str = "f32"
    jpeg_quality: int = 90
    #: yunet (onnxruntime, ~8x cheaper a frame than MTCNN: the only one at >= 20 FPS with liveness on
    #: 2 threads; its liveness windows are cut around its boxes redrawn by MTCNN's R-Net and O-Net,
    #: ``[liveness] boxes = "auto"``) | mtcnn (torch, the server's detector). See the README.
    detector: str = "yunet"
    #: threads for the detector
    threads: int = 2
    #: emit a track's best crop after this long even if the person is still in view
    max_dwell_s: float = 1.0
    #: a track ends when unseen this long
    track_timeout_s: float = 0.5
    #: faces of a track sent in its detection: the best one plus the next best (``track_probes`` on
    #: the wire) so that the server decides on the track, not one frame; 1 = the best face only
    #: (as older agents). At most faceengine.protocol.MAX_TRACK_PROBES.
    track_probes: int = DEFAULT_TRACK_PROBES
    iou_threshold: float = 0.3


LIVENESS_BOXES = ("auto", "detector", "onet")


@dataclass
class LivenessSection:
    #: score every frame of a track for presentation attacks (printed photo, screen) and send the
    #: fused live score in the signed detection. On by default; when the shipped weights cannot be
    #: loaded the agent logs it and sends detections without a score (the server: "not measured").
    enabled: bool = True
    #: threads of each liveness network (onnxruntime, sleeping between frames)
    threads: int = 2
    #: how the track's frame scores become its score: ``median`` (of all its frames) or ``top_k``
    #: (the mean of its best ``fuse_top_k``; all frames if fewer). See edge_agent/liveness.py.
    fusion: str = "median"
    #: with ``fusion = "top_k"``: how many of the best frames are averaged
    fuse_top_k: int = 3
    #: the box the liveness window is cut around: ``detector`` (the detector's own box), ``onet``
    #: (the detector's box redrawn by MTCNN's R-Net and O-Net in MTCNN's convention, the one the
    #: networks' threshold was calibrated with: ``faceengine.onet_refine``), or ``auto`` (``onet``
    #: with YuNet, ``detector`` with MTCNN)
    boxes: str = "auto"

    def resolved_boxes(self, detector: str) -> str:
        """``detector`` or ``onet``: what ``auto`` means with ``detector``."""
        if self.boxes != "auto":
            return self.boxes
        return "onet" if detector == "yunet" else "detector"


@dataclass
class SpoolSection:
    dir: Path = DEFAULT_VAR_DIR / "spool"
    max_entries: int = 10_000


@dataclass
class RelaySection:
    #: simulated | gpio
    driver: str = "simulated"
    gpio_pin: int | None = None
    active_high: bool = True


@dataclass
class DoorSection:
    #: secure (stay locked while offline) | safe (release while offline) | allowlist (decide alone
    #: with the signed offline allow-list the server pushes; secure without a valid one)
    fail_mode: str = "secure"
    #: relay pulse of a door the device opens alone (allow-list grant), milliseconds
    pulse_ms: int = 3000
    #: the device counts as offline after the broker has been unreachable this long
    offline_grace_s: float = 5.0


@dataclass
class InputsSection:
    """The door's inputs (:mod:`edge_agent.inputs`): reported to the server as signed door events."""

    #: none | simulated (set by a test or a bench) | gpio (gpiozero: pip install 'edge-agent[gpio]')
    driver: str = "none"
    #: door position sensor (reed contact) on this GPIO pin; empty: no sensor
    door_sensor_pin: int | None = None
    #: the contact is closed (input active) while the door is shut, the usual wiring; true: the reverse
    door_open_when_active: bool = False
    #: request-to-exit button on this GPIO pin; empty: no button
    exit_button_pin: int | None = None
    #: inputs pull the pin up and the contact pulls it to ground (gpio)
    pull_up: bool = True
    #: how long an exit request releases the lock, milliseconds
    exit_pulse_ms: int = 5000
    #: a PIN or card entered (EdgeAgent.factor_enter) goes with the next face seen within this long
    factor_window_s: float = 30.0
    #: USB keypad or card reader typing digits then Enter, read through evdev (pip install evdev,
    #: Linux), e.g. /dev/input/by-id/usb-...-event-kbd; empty: none
    keypad_device: str = ""
    #: what the keypad device types: pin | card
    keypad_kind: str = "pin"
    #: a pause longer than this between two keys drops the half-typed entry
    keypad_key_timeout_s: float = 5.0
    #: Wiegand card reader on GPIO (gpiozero): its D0 and D1 lines; empty: none
    wiegand_d0_pin: int | None = None
    wiegand_d1_pin: int | None = None
    #: a frame ends after this long without a bit (readers send a bit every ~2 ms), milliseconds
    wiegand_gap_ms: float = 25.0


@dataclass
class ModelsSection:
    """Model bundles the server offers (embedding mode, ``edge_agent/model_update.py``)."""

    #: where bundles are downloaded and the chosen one is remembered (chosen.json)
    dir: Path = DEFAULT_VAR_DIR / "models"
    #: seconds one download request may stall before it is retried (resuming where it stopped)
    download_timeout_s: float = 30.0
    #: CA bundle that verifies the server's HTTPS certificate (empty: the system's)
    tls_ca: Path | None = None
    #: the last faces kept in memory (never on disk) for a new model's self-test ...
    self_test_samples: int = 8
    #: ... and how many it needs at least (fewer: the offer fails, the running model stays)
    self_test_min_samples: int = 3


@dataclass
class AgentSection:
    heartbeat_interval_s: float = 30.0
    log_level: str = "INFO"


@dataclass
class EdgeConfig:
    device: DeviceSection = field(default_factory=DeviceSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    camera: CameraSection = field(default_factory=CameraSection)
    detection: DetectionSection = field(default_factory=DetectionSection)
    liveness: LivenessSection = field(default_factory=LivenessSection)
    spool: SpoolSection = field(default_factory=SpoolSection)
    relay: RelaySection = field(default_factory=RelaySection)
    door: DoorSection = field(default_factory=DoorSection)
    inputs: InputsSection = field(default_factory=InputsSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    agent: AgentSection = field(default_factory=AgentSection)

    def validate(self, *, need_keys: bool = True) -> EdgeConfig:
        """Fail fast on missing or inconsistent values; returns ``self``."""
        try:
            validate_device_uid(self.device.uid)
        except ProtocolError:
            raise ConfigError(f"device.uid (ACS_EDGE_DEVICE_UID) is missing or invalid: {self.device.uid!r}") from None
        if need_keys and not self.device.server_public_key:
            raise ConfigError("device.server_public_key (ACS_EDGE_DEVICE_SERVER_PUBLIC_KEY) is required")
        if need_keys and not self.device.private_key_path.is_file():
            raise ConfigError(f"device private key not found: {self.device.private_key_path}")
        scheme = urlsplit(self.mqtt.url).scheme
        if scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"mqtt.url must be mqtt:// or mqtts://, got {self.mqtt.url!r}")
        _choice("detection.mode", self.detection.mode, ("crop", "embedding"))
        _choice("detection.detector", self.detection.detector, ("yunet", "mtcnn"))
        _choice("detection.embedder", self.detection.embedder, tuple(available_backends()))
        _choice("detection.embedding_encoding", self.detection.embedding_encoding, ("f32", "f16", "int8"))
        _choice("relay.driver", self.relay.driver, ("simulated", "gpio"))
        _choice("door.fail_mode", self.door.fail_mode, ("secure", "safe", "allowlist"))
        if not 0 < self.door.pulse_ms <= 60_000:
            raise ConfigError("door.pulse_ms must be 1..60000")
        _choice("inputs.driver", self.inputs.driver, ("none", "simulated", "gpio"))
        if not 0 < self.inputs.exit_pulse_ms <= 60_000:
            raise ConfigError("inputs.exit_pulse_ms must be 1..60000")
        _choice("inputs.keypad_kind", self.inputs.keypad_kind, ("pin", "card"))
        if not 0 < self.inputs.keypad_key_timeout_s <= 600:
            raise ConfigError("inputs.keypad_key_timeout_s must be in (0, 600]")
        if (self.inputs.wiegand_d0_pin is None) != (self.inputs.wiegand_d1_pin is None):
            raise ConfigError("inputs.wiegand_d0_pin and inputs.wiegand_d1_pin go together")
        if not 2 <= self.inputs.wiegand_gap_ms <= 1000:
            raise ConfigError("inputs.wiegand_gap_ms must be 2..1000")
        if self.inputs.driver == "gpio" and self.inputs.door_sensor_pin is None and self.inputs.exit_button_pin is None:
            raise ConfigError("inputs.driver = gpio needs inputs.door_sensor_pin or inputs.exit_button_pin")
        if self.relay.driver == "gpio" and self.relay.gpio_pin is None:
            raise ConfigError("relay.gpio_pin is required with relay.driver = gpio")
        if not 1 <= self.detection.track_probes <= MAX_TRACK_PROBES:
            raise ConfigError(f"detection.track_probes must be 1..{MAX_TRACK_PROBES}")
        if self.liveness.fuse_top_k < 1:
            raise ConfigError("liveness.fuse_top_k must be >= 1")
        _choice("liveness.boxes", self.liveness.boxes, LIVENESS_BOXES)
        _choice("liveness.fusion", self.liveness.fusion, ("median", "top_k"))
        if self.liveness.threads < 1:
            raise ConfigError("liveness.threads must be >= 1")
        if not 2 <= self.models.self_test_min_samples <= self.models.self_test_samples <= 64:
            raise ConfigError("models: 2 <= self_test_min_samples <= self_test_samples <= 64")
        if self.models.download_timeout_s <= 0:
            raise ConfigError("models.download_timeout_s must be > 0")
        if self.spool.max_entries < 1:
            raise ConfigError("spool.max_entries must be >= 1")
        return self


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def _convert(name: str, raw: Any, hint: Any) -> Any:
    """Coerce a TOML or environment value to the field type ``hint``."""
    args = typing.get_args(hint)
    if args and type(None) in args:
        if raw is None or raw == "":
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        lowered = str(raw).strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected a boolean, got {raw!r}")
    try:
        if hint is int and not isinstance(raw, bool):
            return int(raw)
        if hint is float and not isinstance(raw, bool):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a {hint.__name__}, got {raw!r}") from None
    if hint is Path:
        return Path(str(raw)).expanduser()
    if hint is str:
        return str(raw)
    raise ConfigError(f"{name}: cannot convert {raw!r}")


def load_config(path: Path | str | None = None, *, environ: Mapping[str, str] | None = None) -> EdgeConfig:
    """Read ``path`` (TOML, optional) then apply ``ACS_EDGE_*`` overrides from ``environ``."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with Path(path).open("rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    config = EdgeConfig()
    unknown = set(data) - {f.name for f in dataclasses.fields(config)}
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)}")
    for section_field in dataclasses.fields(config):
        section = getattr(config, section_field.name)
        values = data.get(section_field.name, {})
        hints = typing.get_type_hints(type(section))
        known = {f.name for f in dataclasses.fields(section)}
        if unknown := set(values) - known:
            raise ConfigError(f"unknown keys in [{section_field.name}]: {sorted(unknown)}")
        for key in known:
            dotted = f"{section_field.name}.{key}"
            env_name = f"{ENV_PREFIX}{section_field.name}_{key}".upper()
            if env_name in environ:
                setattr(section, key, _convert(dotted, environ[env_name], hints[key]))
            elif key in values:
                setattr(section, key, _convert(dotted, values[key], hints[key]))
    return config
