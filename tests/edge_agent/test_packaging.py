"""The edge agent installs on its own: both wheels into a fresh venv, no server app on the path.

Builds the ``faceengine`` and ``edge_agent`` wheels, installs them (``--no-deps --no-index``) into a
new virtual environment that sees this venv's third-party packages through a ``.pth`` line (torch,
numpy, cryptography, ... are not reinstalled; the repository root is NOT on that path), and from a
folder outside the checkout runs a simulated detection: the real MTCNN finds the face on a photo,
the shipped liveness networks (inside the faceengine wheel) score it, the agent builds and signs the
detection, and the receiver's checks (``open_message``) accept it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from tests.faces import face_jpeg

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import edge_agent
import faceengine
import faceengine.liveness
from edge_agent.agent import EdgeAgent, agent_liveness
from edge_agent.config import EdgeConfig
from edge_agent.relay import SimulatedRelay
from edge_agent.vision import detector_build, prepare
from faceengine import protocol as p

here = Path.cwd()
venv_prefix = Path(sys.prefix)
for module in (edge_agent, faceengine):
    assert Path(module.__file__).is_relative_to(venv_prefix), module.__file__
for name in ("accessctl", "recognition", "devices", "tests"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable"

device_private, device_public = p.generate_keypair()
_, server_public = p.generate_keypair()
(here / "device.key").write_text(device_private)
config = EdgeConfig()
config.device.uid = "door-packaged"
config.device.private_key_path = here / "device.key"
config.device.server_public_key = server_public
config.mqtt.url = "mqtt://127.0.0.1:1"  # never started: no network
config.spool.dir = here / "spool"
config.detection.min_face_px = 20
config.validate()
detector = detector_build(config.detection.detector, min_face_px=20, threads=1)
liveness = agent_liveness(config)  # [liveness] enabled by default: the weights come with the wheel
assert liveness is not None, "liveness weights did not load from the installed faceengine"
agent = EdgeAgent(config, camera=None, detector=detector, relay=SimulatedRelay(), liveness=liveness)

rgb = np.asarray(Image.open(here / "face.jpg").convert("RGB"))
candidates = prepare(rgb, detector.detect(rgb), min_face_px=20, min_score=0.5)
assert candidates, "no face found"
(scored,) = agent.score_liveness(rgb, candidates[:1])
evidence = agent.fuse_liveness([scored.liveness])
detection, size = agent.send_candidate(scored, captured_at=time.time(), liveness=evidence)
assert detection.liveness is not None and detection.liveness_frames == 1
assert len(agent.spool) == 1

raw = p.seal(detection, device_private)
received = p.open_message(p.detections_topic("door-packaged"), raw, device_public, window_s=p.DETECTION_WINDOW_S)
assert received == detection and received.mode == p.Mode.CROP and received.crop_jpeg.startswith(b"\xff\xd8")
assert received.liveness_model == faceengine.liveness.MODEL_VERSION
try:
    p.open_message(p.detections_topic("door-packaged"), raw, server_public)
except p.ProtocolError as exc:
    assert exc.code is p.Reason.BAD_SIGNATURE
else:
    raise AssertionError("a detection verified with the wrong key")
agent.spool.close()

bad = sorted(m for m in sys.modules if m.split(".")[0] in ("django", "accessctl", "recognition", "devices", "tests"))
assert not bad, bad
print(f"packaged detection ok: {size} bytes, box {detection.box}, liveness {detection.liveness:.4f}")
"""


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, f"{argv[:4]} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_agent_wheel_installs_and_runs_a_detection_without_the_server(tmp_path: Path) -> None:
    # build from copies, so that nothing (build/, *.egg-info) is written into the checkout
    sources = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    for package in ("faceengine", "edge_agent"):
        shutil.copytree(ROOT / package, sources / package, ignore=ignore)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), "./faceengine", "./edge_agent"], sources)
    wheels = sorted(dist.glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["accessctl_edge_agent", "accessctl_faceengine"]

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    # the heavy third-party packages of this venv, without reinstalling them (and without the repo)
    parent_site = Path(sysconfig.get_paths()["purelib"])
    (site / "parent-venv.pth").write_text(f"{parent_site}\n")
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", *map(str, wheels)], tmp_path)

    work = tmp_path / "device"
    work.mkdir()
    (work / "face.jpg").write_bytes(face_jpeg())
    result = _run([str(python), "-I", "-c", SCRIPT], work)
    assert "packaged detection ok" in result.stdout
    # the console script is installed too
    assert (env_dir / "bin" / "accessctl-edge").is_file()
