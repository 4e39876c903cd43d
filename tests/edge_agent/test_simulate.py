"""``simulate``: real MTCNN on face photos, signed detections out, signed decisions back."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from accessctl.project.embedded import ChildService
from edge_agent.agent import EdgeAgent
from edge_agent.relay import SimulatedRelay
from edge_agent.simulate import Pace, Visitor, lfw_images, photo_tracks, simulate, visitor_schedule, visitors_split
from edge_agent.vision import MtcnnDetector
from faceengine import protocol as p
from tests.edge_agent.conftest import Keys, ServerClient, face_at, face_image, make_config


def answer_detections(server: ServerClient, keys: Keys, stop: threading.Event) -> None:
    """A stand-in for the server: verify each detection and grant it."""
    while not stop.is_set():
        try:
            topic, raw = server.next(p.TopicKind.DETECTIONS, timeout=0.5)
        except Exception:  # noqa: S112 - queue.Empty / TimeoutError: poll again
            continue
        det = p.open_message(topic, raw, keys.device_public, window_s=30)
        cmd = p.Command(
            device_uid=det.device_uid,
            command="open",
            command_id=p.new_id(),
            detection_id=det.detection_id,
            issued_at=det.sent_at,
            reason="granted",
            pulse_ms=500,
        )
        server.publish(p.commands_topic(det.device_uid), p.seal(cmd, keys.server_private))


def test_simulate_visitors(tmp_path: Path, keys: Keys, broker: ChildService, server: ServerClient) -> None:
    folder = tmp_path / "lfw" / "images" / "Some_Person"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(face_image()).save(folder / f"Some_Person_000{i + 1}.jpg")
    (tmp_path / "lfw" / "images" / "Blank").mkdir()
    Image.new("RGB", (150, 150)).save(tmp_path / "lfw" / "images" / "Blank" / "Blank_0001.jpg")
    images = lfw_images(tmp_path / "lfw", 10)
    assert [i.name for i in images] == ["Blank_0001.jpg", "Some_Person_0001.jpg", "Some_Person_0002.jpg"]

    relay = SimulatedRelay()
    agent = EdgeAgent(
        make_config(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}"), camera=None, detector=None, relay=relay
    )
    stop = threading.Event()
    responder = threading.Thread(target=answer_detections, args=(server, keys, stop), daemon=True)
    responder.start()
    lines: list[str] = []
    try:
        counts = simulate(agent, MtcnnDetector(min_face_px=20, threads=2), images, wait_s=10, out=lines.append)
    finally:
        stop.set()
        responder.join(5)
    assert counts["visitors"] == 3 and counts["no_face"] == 1 and counts["decided"] == 2
    assert "no usable face" in lines[0]
    assert "open (granted) pulse 500 ms" in lines[1] and "bytes sent" in lines[1]
    assert "bytes per detection (crop mode)" in lines[-1]
    assert relay.pulses == [500, 500]


# -- issue 16 item 7: the demo camera is a calm site that never ends --------------------------


def _arrivals(visitors: list[Visitor]) -> list[float]:
    t, out = 0.0, []
    for v in visitors:
        t += v.delay_s
        out.append(t)
    return out


def test_calm_site_schedule_loops_for_ever_mostly_regulars_and_never_three_strangers_a_minute() -> None:
    regulars = [Path(f"Regular_{i}/Regular_{i}_0001.jpg") for i in range(6)]
    strangers = [Path(f"Stranger_{i}/Stranger_{i}_0001.jpg") for i in range(4)]
    pace = Pace()
    visitors = list(itertools.islice(visitor_schedule(regulars, strangers, pace=pace, rng=random.Random(7)), 5000))
    assert len(visitors) == 5000  # far more visitors than photos: it loops
    assert all(pace.gap_s * 0.5 <= v.delay_s <= pace.gap_s * 1.5 for v in visitors)  # seconds apart
    assert all((v.photo in strangers) == v.stranger for v in visitors)
    share = sum(v.stranger for v in visitors) / len(visitors)
    assert 0.03 < share < 0.15  # mostly enrolled people, occasional strangers
    times = [t for t, v in zip(_arrivals(visitors), visitors, strict=True) if v.stranger]
    assert min(b - a for a, b in itertools.pairwise(times)) >= pace.stranger_gap_s
    assert all(c - a > 60 for a, _, c in zip(times, times[1:], times[2:], strict=False))  # the alarm wants 3 in 60 s
    assert {v.photo for v in visitors} == set(regulars) | set(strangers)

    only_strangers = list(itertools.islice(visitor_schedule([], strangers, pace=pace, rng=random.Random(1)), 50))
    assert all(v.stranger for v in only_strangers)
    assert all(v.delay_s >= pace.stranger_gap_s for v in only_strangers[1:])
    with pytest.raises(ValueError, match="no photos"):
        next(visitor_schedule([], [], pace=pace))


def test_visitors_split_by_enrolled_names(tmp_path: Path) -> None:
    images = [tmp_path / "A_B" / "A_B_0001.jpg", tmp_path / "C_D" / "C_D_0001.jpg", tmp_path / "A_B" / "A_B_0002.jpg"]
    assert visitors_split(images, ["A_B"]) == ([images[0], images[2]], [images[1]])


def test_simulate_waits_each_visitors_gap_and_runs_until_stopped(tmp_path: Path, keys: Keys) -> None:
    """At unit level, no broker and no long waits: an endless schedule is played at its pace until
    the stop event, and a stop during a long gap ends the wait at once."""
    photo = tmp_path / "Some_Person" / "Some_Person_0001.jpg"
    photo.parent.mkdir()
    Image.fromarray(face_image()).save(photo)
    arrivals: list[float] = []

    class Stop(threading.Event):
        """The stop event, noting when each wait for a visitor's gap ends (that visitor's arrival)."""

        def wait(self, timeout: float | None = None) -> bool:
            stopped = super().wait(timeout)
            arrivals.append(time.monotonic())
            return stopped

    stop = Stop()
    seen: list[float] = []

    class Detector:
        def detect(self, rgb: object) -> list:
            seen.append(time.monotonic())
            if len(seen) == 4:
                stop.set()
            return [face_at((50, 36, 110, 114))]

    def endless() -> Iterator[Visitor]:
        yield Visitor(photo)
        while True:
            yield Visitor(photo, delay_s=0.2)

    agent = EdgeAgent(make_config(tmp_path, keys, "mqtt://127.0.0.1:1"), camera=None, detector=None,
                      relay=SimulatedRelay())  # fmt: skip
    lines: list[str] = []
    counts = simulate(agent, Detector(), endless(), wait_s=0, connect_timeout_s=0, out=lines.append, stop=stop)
    assert counts["visitors"] == 4 and len(seen) == 4  # it stopped on the event, not at the end of the photos
    # Each visitor arrived its gap after the previous one (detections follow at the image's own pace).
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(arrivals[:4])), arrivals
    assert lines[1].startswith("visitor 1 Some_Person_0001.jpg: no decision within 0s")  # no "n/total": endless

    stop.clear()
    seen.clear()
    long_gap = iter([Visitor(photo), Visitor(photo, delay_s=3600.0)])
    (tmp_path / "b").mkdir()
    agent = EdgeAgent(make_config(tmp_path / "b", keys, "mqtt://127.0.0.1:1"), camera=None, detector=None,
                      relay=SimulatedRelay())  # fmt: skip
    stopper = threading.Timer(0.3, stop.set)
    stopper.start()
    started = time.monotonic()
    counts = simulate(agent, Detector(), long_gap, wait_s=0, connect_timeout_s=0, out=lines.append, stop=stop)
    assert counts["visitors"] == 1 and time.monotonic() - started < 60  # not an hour


def test_photo_tracks_group_consecutive_photos_of_one_person() -> None:
    paths = [
        Path(f"lfw/{name}/{name}_{n:04d}.jpg") for name, count in (("A", 5), ("B", 1), ("C", 2)) for n in range(count)
    ]
    tracks = photo_tracks(paths, 3)
    assert [(t.photo.name, [m.name for m in t.more]) for t in tracks] == [
        ("A_0000.jpg", ["A_0001.jpg", "A_0002.jpg"]),
        ("A_0003.jpg", ["A_0004.jpg"]),
        ("B_0000.jpg", []),
        ("C_0000.jpg", ["C_0001.jpg"]),
    ]
    assert [t.photo for t in photo_tracks(paths, 1)] == paths
    with pytest.raises(ValueError, match="photos_per_track"):
        photo_tracks(paths, 0)


def test_a_visitor_of_several_photos_is_sent_as_one_track(tmp_path: Path, keys: Keys) -> None:
    """The best face by quality goes first, the others as track probes (as the agent sends a track)."""
    small, large = tmp_path / "P" / "P_0001.jpg", tmp_path / "P" / "P_0002.jpg"
    small.parent.mkdir()
    Image.fromarray(face_image()).save(small)
    Image.fromarray(face_image()).save(large)
    boxes = iter([(60, 50, 100, 100), (50, 36, 110, 114)])  # the second photo's face is bigger

    class Detector:
        def detect(self, rgb: object) -> list:
            return [face_at(next(boxes))]

    agent = EdgeAgent(make_config(tmp_path, keys, "mqtt://127.0.0.1:1"), camera=None, detector=None,
                      relay=SimulatedRelay())  # fmt: skip
    sent: list[p.Detection] = []
    send = agent.send_candidate

    def spy(*args: object, **kwargs: object) -> tuple[p.Detection, int]:
        detection, size = send(*args, **kwargs)  # type: ignore[arg-type]
        sent.append(detection)
        return detection, size

    agent.send_candidate = spy  # type: ignore[method-assign]
    counts = simulate(agent, Detector(), [Visitor(small, more=(large,))], wait_s=0, connect_timeout_s=0, out=print)
    assert counts["visitors"] == 1 and len(sent) == 1
    (detection,) = sent
    assert len(detection.track_probes) == 1 and detection.quality["frames"] == 2.0
    assert detection.box == (50, 36, 110, 114)  # the larger (better) face leads the track
