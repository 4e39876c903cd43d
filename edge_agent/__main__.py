"""Command line: ``python -m edge_agent {run,keygen,simulate}``."""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from edge_agent.config import ConfigError, EdgeConfig, load_config
from faceengine.protocol import MIN_FACE_PX, generate_keypair

logger = logging.getLogger("edge_agent")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new device key (0600) and print the public key to register on the server."""
    path: Path = args.out
    if path.exists() and not args.force:
        print(f"{path} exists; use --force to replace it", file=sys.stderr)
        return 1
    private_pem, public_b64 = generate_keypair()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(private_pem)
    print(f"private key: {path}")
    print(f"public key:  {public_b64}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.agent import build_agent

    config = load_config(args.config).validate()
    _setup_logging(args.log_level or config.agent.log_level)
    agent = build_agent(config)

    def _stop(signum: int, frame: object) -> None:
        logger.info("signal %d: stopping", signum)
        agent.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent.run()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from edge_agent.agent import EdgeAgent, agent_liveness
    from edge_agent.relay import SimulatedRelay
    from edge_agent.simulate import (
        Pace,
        Visitor,
        lfw_images,
        photo_tracks,
        simulate,
        visitor_schedule,
        visitors_split,
    )
    from edge_agent.vision import LocalEmbedder, detector_build

    config = load_config(args.config) if args.config else EdgeConfig()
    _setup_logging(args.log_level or "WARNING")
    if args.server_mqtt:
        config.mqtt.url = args.server_mqtt
    if args.device_uid:
        config.device.uid = args.device_uid
    if args.device_key:
        config.device.private_key_path = args.device_key
    if args.server_public_key:
        config.device.server_public_key = args.server_public_key
    if args.mode:
        config.detection.mode = args.mode
    if args.encoding:
        config.detection.embedding_encoding = args.encoding
    if args.spool_dir:
        config.spool.dir = args.spool_dir
    if args.min_face_px:
        config.detection.min_face_px = args.min_face_px
    if args.liveness is not None:
        config.liveness.enabled = args.liveness
    config.validate()
    if args.frames:
        return _simulate_frames(args, config)
    images = lfw_images(args.lfw, args.count, offset=args.offset)
    if not images:
        print(f"no images under {args.lfw}", file=sys.stderr)
        return 1
    visitors: Iterable[Path | Visitor] = photo_tracks(images, args.track_photos) if args.track_photos > 1 else images
    if args.loop:  # a calm site for ever: mostly the regulars, now and then a stranger
        regulars, strangers = visitors_split(images, args.regulars.split(",") if args.regulars else [])
        pace = Pace(gap_s=args.gap)
        visitors = visitor_schedule(regulars, strangers, pace=pace, rng=random.Random(args.seed))
        logger.warning(
            "playing %d photos of %d regulars and %d of strangers for ever, a visitor every %.0f s or so",
            len(regulars), len(set(path.parent.name for path in regulars)), len(strangers), pace.gap_s,
        )  # fmt: skip
    d = config.detection
    embedder = LocalEmbedder(d.embedder) if d.mode == "embedding" else None
    agent = EdgeAgent(
        config,
        camera=None,
        detector=None,
        relay=SimulatedRelay(),
        embedder=embedder,
        liveness=agent_liveness(config),
    )
    stop = _stop_on_signals()
    detector = detector_build(d.detector, min_face_px=d.min_face_px, threads=d.threads)
    counts = simulate(agent, detector, visitors, wait_s=args.wait, stop=stop)
    return 0 if counts["visitors"] else 1


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        logger.warning("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stop


def _simulate_frames(args: argparse.Namespace, config: EdgeConfig) -> int:
    """``simulate --frames DIR ...``: each folder of frames is one visitor seen by the door camera."""
    from edge_agent.agent import EdgeAgent, agent_liveness
    from edge_agent.relay import SimulatedRelay
    from edge_agent.simulate import simulate_frames
    from edge_agent.vision import LocalEmbedder, detector_build

    d = config.detection
    agent = EdgeAgent(
        config,
        camera=None,
        detector=detector_build(d.detector, min_face_px=d.min_face_px, threads=d.threads),
        relay=SimulatedRelay(),
        embedder=LocalEmbedder(d.embedder) if d.mode == "embedding" else None,
        liveness=agent_liveness(config),
    )
    max_fps = config.camera.max_fps if args.fps is None else args.fps
    counts = simulate_frames(
        agent, args.frames, max_fps=max_fps, limit=args.frames_limit, wait_s=args.wait, stop=_stop_on_signals()
    )
    return 0 if counts["detections"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edge_agent", description="accessctl edge agent")
    parser.add_argument("--log-level", default=None)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent on a door device")
    run.add_argument("--config", type=Path, required=True, help="TOML config (ACS_EDGE_* variables override it)")
    run.set_defaults(func=cmd_run)

    keygen = sub.add_parser("keygen", help="create the device's Ed25519 key")
    keygen.add_argument("--out", type=Path, default=Path("var/edge/device.key"))
    keygen.add_argument("--force", action="store_true")
    keygen.set_defaults(func=cmd_keygen)

    sim = sub.add_parser("simulate", help="play LFW images as visitors against a server")
    sim.add_argument("--config", type=Path, default=None)
    sim.add_argument("--server-mqtt", help="mqtt:// or mqtts:// URL of the server's broker")
    sim.add_argument(
        "--lfw", type=Path, default=Path("var/datasets/lfw"), help="LFW folder (default: var/datasets/lfw)"
    )
    sim.add_argument("--device-key", type=Path, help="device private key (PEM)")
    sim.add_argument("--device-uid", help="device uid registered on the server")
    sim.add_argument("--server-public-key", help="base64 server public key (verifies decisions)")
    sim.add_argument("--count", type=int, default=10)
    sim.add_argument("--offset", type=int, default=0)
    sim.add_argument("--mode", choices=("crop", "embedding"))
    sim.add_argument("--encoding", choices=("f32", "f16", "int8"))
    sim.add_argument("--min-face-px", type=int, help=f"smallest face sent (default: the config's, {MIN_FACE_PX})")
    sim.add_argument("--wait", type=float, default=10.0, help="seconds to wait for each decision")
    sim.add_argument("--spool-dir", type=Path, help="spool directory (default var/edge/spool)")
    sim.add_argument("--loop", action="store_true", help="a calm site: visitors seconds apart, for ever")
    sim.add_argument(
        "--track-photos",
        type=int,
        default=1,
        help="up to K consecutive photos of one person make one visitor, sent as a track (best face + "
        "track probes, as the agent sends them; not with --loop); default 1",
    )
    sim.add_argument("--regulars", help="--loop: LFW names (Colin_Powell,...) of the enrolled people, most visitors")
    sim.add_argument("--gap", type=float, default=8.0, help="--loop: mean seconds between visitors (default 8)")
    sim.add_argument("--seed", type=int, default=None, help="--loop: random seed (the same visitors each time)")
    sim.add_argument(
        "--frames",
        type=Path,
        action="append",
        help="instead of LFW: a folder of consecutive frames (name order) played by the camera as one visitor "
        "(detect, liveness, track, as a door does); repeat for more visitors, e.g. nuaa-dev print/0001 then live/0001",
    )
    sim.add_argument("--frames-limit", type=int, default=None, help="--frames: the first N frames of each folder")
    sim.add_argument(
        "--fps", type=float, default=None, help="--frames: camera frames per second (default camera.max_fps)"
    )
    sim.add_argument(
        "--liveness",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score liveness and send it (default: the config's [liveness] enabled)",
    )
    sim.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
