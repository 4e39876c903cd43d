"""Demo data for ``manage.py up --demo`` (through ``manage.py demo``): a door, a group of LFW people and a
simulated door camera.

Idempotent: running it again reuses what exists. The simulated camera is the real edge agent
(``python -m edge_agent simulate --loop``) playing LFW photos as visitors of a calm site, for ever:
a visitor every few seconds, mostly the people enrolled here (let in by their other photos), now
and then a stranger (an unknown face), never enough of them to raise the repeated unknown faces
alarm.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from accessctl.models import AccessGroup, Door, Person
from accessctl.project.progress import progress_bar
from devices.models import EdgeDevice
from devices.provisioning import agent_config, device_provision, secret_file_write
from recognition.datasets import lfw_locate
from recognition.enrollment import photo_enroll

logger = logging.getLogger(__name__)

DEMO_DEVICE = "demo-cam-1"
DEMO_VISITOR_GAP_S = 8.0  # seconds between visitors, on average


@dataclass(frozen=True)
class Demo:
    config_path: Path
    lfw_root: Path
    visitors: int
    regulars: tuple[str, ...] = ()  # LFW names of the enrolled people: most visitors

    def simulator_argv(self) -> list[str]:
        return [
            sys.executable, "-m", "edge_agent", "--log-level", "WARNING", "simulate", "--config", str(self.config_path),
            "--lfw", str(self.lfw_root), "--count", str(self.visitors), "--wait", "15",
            "--loop", "--regulars", ",".join(self.regulars), "--gap", str(DEMO_VISITOR_GAP_S),
        ]  # fmt: skip


def _visitor_photos(lfw_root: Path, count: int) -> list[Path]:
    base = lfw_root / "images" if (lfw_root / "images").is_dir() else lfw_root
    return sorted(base.rglob("*.jpg"))[:count]


def demo_prepare(*, lfw_root: Path | None = None, visitors: int = 300, enrol_people: int = 12) -> Demo:
    """Create the demo door, group, people (enrolled from their first LFW photo) and device.

    ``lfw_root``: the LFW folder (default: :func:`recognition.datasets.lfw_locate`, which downloads it once).
    """
    lfw_root = lfw_root or lfw_locate()
    door, _ = Door.objects.get_or_create(name="Demo entrance", defaults={"location": "Lobby", "timezone": "UTC"})
    group, _ = AccessGroup.objects.get_or_create(name="Demo staff", defaults={"description": "Enrolled demo people"})
    group.doors.add(door)
    by_person: dict[str, list[Path]] = defaultdict(list)
    for path in _visitor_photos(lfw_root, visitors):
        by_person[path.parent.name].append(path)
    regulars = [name for name, paths in by_person.items() if len(paths) >= 3][:enrol_people]
    for name in progress_bar(regulars, desc="demo: enrolling", unit="person"):
        person, created = Person.objects.get_or_create(name=name.replace("_", " "), defaults={"notes": "demo (LFW)"})
        group.people.add(person)
        if created:
            photo = photo_enroll(person=person, image=by_person[name][0].read_bytes(), filename=by_person[name][0].name)
            logger.info("demo: enrolled %s (%s)", person.name, photo.status)

    work = Path(settings.VAR_DIR) / "demo"
    work.mkdir(parents=True, exist_ok=True)
    key_path = work / "device.key"
    with transaction.atomic():
        rotate = EdgeDevice.objects.filter(uid=DEMO_DEVICE).exists()
        provisioned = device_provision(uid=DEMO_DEVICE, door=door, name="Demo camera", rotate=rotate)
    secret_file_write(key_path, provisioned.private_key_pem)
    config = agent_config(provisioned, key_path=str(key_path))
    config += f'\n[detection]\nmode = "crop"\nmin_face_px = 40\n\n[spool]\ndir = "{work / "spool"}"\n'
    config_path = work / "agent.toml"
    secret_file_write(config_path, config)  # holds the device's broker password
    logger.info("demo: door %r, %d enrolled people, device %s", door.name, len(regulars), DEMO_DEVICE)
    return Demo(config_path=config_path, lfw_root=lfw_root, visitors=visitors, regulars=tuple(regulars))
