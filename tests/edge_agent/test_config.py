"""Config: TOML file, ACS_EDGE_* overrides, fail-fast validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "edge_agent" / "config.example.toml"


def test_toml_and_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        '[device]\nuid = "door-7"\nserver_public_key = "abc"\n'
        '[mqtt]\nurl = "mqtts://broker.example:8883"\ntls_ca = "/etc/ca.pem"\n'
        '[door]\nfail_mode = "safe"\n[spool]\nmax_entries = 50\n'
    )
    env = {"ACS_EDGE_DOOR_FAIL_MODE": "secure", "ACS_EDGE_CAMERA_MAX_FPS": "7.5", "ACS_EDGE_RELAY_GPIO_PIN": "17"}
    config = load_config(path, environ=env)
    assert config.device.uid == "door-7"
    assert config.mqtt.url == "mqtts://broker.example:8883" and config.mqtt.tls_ca == Path("/etc/ca.pem")
    assert config.door.fail_mode == "secure"
    assert config.camera.max_fps == 7.5 and config.relay.gpio_pin == 17
    assert config.spool.max_entries == 50
    config.validate(need_keys=False)


def test_allowlist_fail_mode_and_pulse(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[device]\nuid = "door-7"\n[door]\nfail_mode = "allowlist"\npulse_ms = 1500\n')
    config = load_config(path, environ={}).validate(need_keys=False)
    assert (config.door.fail_mode, config.door.pulse_ms) == ("allowlist", 1500)


def test_example_config_parses() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.device.uid
    assert config.detection.detector == "yunet"
    config.validate(need_keys=False)


def test_detector_choice(tmp_path: Path) -> None:
    """YuNet by default; MTCNN by the file or the environment; each builds the matching adapter."""
    from edge_agent.vision import MtcnnDetector, YunetDetector, detector_build

    assert load_config(None, environ={}).detection.detector == "yunet"
    path = tmp_path / "edge.toml"
    path.write_text('[device]\nuid = "d"\n[detection]\ndetector = "mtcnn"\n')
    assert load_config(path, environ={}).validate(need_keys=False).detection.detector == "mtcnn"
    env = {"ACS_EDGE_DETECTION_DETECTOR": "yunet"}
    assert load_config(path, environ=env).validate(need_keys=False).detection.detector == "yunet"
    assert isinstance(detector_build("yunet", min_face_px=40, threads=1), YunetDetector)
    assert isinstance(detector_build("mtcnn", min_face_px=40, threads=1), MtcnnDetector)
    with pytest.raises(ValueError, match="unknown detector"):
        detector_build("haar")


@pytest.mark.parametrize(
    ("toml", "env"),
    [
        ("[device]\nuid = 'a/b'\n", {}),
        ("[device]\nuid = 'd'\n[mqtt]\nurl = 'http://x'\n", {}),
        ("[device]\nuid = 'd'\n", {"ACS_EDGE_DETECTION_MODE": "fullframe"}),
        ("[device]\nuid = 'd'\n[detection]\ndetector = 'haar'\n", {}),
        ("[device]\nuid = 'd'\n[relay]\ndriver = 'gpio'\n", {}),
        ("[device]\nuid = 'd'\n[door]\nfail_mode = 'open'\n", {}),
        ("[device]\nuid = 'd'\n[door]\nfail_mode = 'allowlist'\npulse_ms = 0\n", {}),
    ],
)
def test_invalid(tmp_path: Path, toml: str, env: dict[str, str]) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError):
        load_config(path, environ=env).validate(need_keys=False)


def test_unknown_keys_and_bad_types(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[mqtt]\nurll = 'x'\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="boolean"):
        load_config(None, environ={"ACS_EDGE_RELAY_ACTIVE_HIGH": "maybe"})
    with pytest.raises(ConfigError, match="required"):
        load_config(None, environ={"ACS_EDGE_DEVICE_UID": "d"}).validate()


@pytest.mark.parametrize("value", [0, 6])
def test_track_probes_bounded_by_the_protocol(value: int) -> None:
    from edge_agent.config import EdgeConfig

    config = EdgeConfig()
    config.device.uid = "door-1"
    config.detection.track_probes = value
    with pytest.raises(ConfigError, match="track_probes"):
        config.validate(need_keys=False)


def test_embedder_choice(tmp_path: Path) -> None:
    """The float SFace by default; its int8 variant by the file or the environment; a name no
    backend has is refused at start, not at the first face."""
    assert load_config(None, environ={}).detection.embedder == "sface"
    path = tmp_path / "edge.toml"
    path.write_text('[device]\nuid = "d"\n[detection]\nmode = "embedding"\nembedder = "sface-int8"\n')
    assert load_config(path, environ={}).validate(need_keys=False).detection.embedder == "sface-int8"
    env = {"ACS_EDGE_DETECTION_EMBEDDER": "sface"}
    assert load_config(path, environ=env).validate(need_keys=False).detection.embedder == "sface"
    with pytest.raises(ConfigError, match=r"detection\.embedder"):
        load_config(path, environ={"ACS_EDGE_DETECTION_EMBEDDER": "sface-int4"}).validate(need_keys=False)
