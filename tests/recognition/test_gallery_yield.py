"""The gallery build gives way to door decisions: it yields while staged detections wait
(``DoorsFirst``, on ``recognition.staging.staged_backlog``), and its worker runs at a lower CPU
priority that also weighs against workers in other sessions (``recognition.worker_priority``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.utils import timezone

from faceengine import protocol as p
from recognition.gallery_migration import DoorsFirst, gallery_migration_run, gallery_migration_start
from recognition.models import GalleryMigration, InboundDetection, ModelVersion
from recognition.staging import Backlog, staged_backlog
from recognition.worker_priority import autogroup_nice_raise, session_is_own
from tests.recognition.test_gallery_migration import CASIA, _enrol, casia_loaded  # noqa: F401 (a fixture)


def _staged(age_s: float) -> InboundDetection:
    row = InboundDetection.objects.create(detection_id=p.new_id(), device_uid="hall-1", payload={})
    InboundDetection.objects.filter(pk=row.pk).update(received_at=timezone.now() - dt.timedelta(seconds=age_s))
    return row


@pytest.mark.django_db
def test_the_backlog_counts_the_detections_waiting_and_leaves_lost_ones_to_the_sweep() -> None:
    assert staged_backlog(within_s=30) == Backlog(staged=0, oldest_s=0.0)
    _staged(300)  # a lost task (the inbound sweep's), not a door waiting now
    assert staged_backlog(within_s=30) == Backlog(staged=0, oldest_s=0.0)
    _staged(0.0)
    _staged(2.0)
    backlog = staged_backlog(within_s=30)
    assert backlog.staged == 2 and 2.0 <= backlog.oldest_s < 5.0


class _Doors:
    """A backlog that is busy for the first ``busy`` looks, then clear."""

    def __init__(self, busy: int) -> None:
        self.busy, self.looks, self.slept = busy, 0, []

    def backlog(self) -> Backlog:
        self.looks += 1
        return Backlog(staged=3, oldest_s=0.5 if self.looks <= self.busy else 0.01)


def test_the_build_waits_while_decisions_are_behind_and_moves_on_when_they_catch_up() -> None:
    fake = _Doors(busy=3)
    doors = DoorsFirst(busy_age_s=0.15, max_s=2.0, step_s=0.05, backlog=fake.backlog, sleep=fake.slept.append)
    assert doors.wait() == pytest.approx(0.15) and fake.slept == [0.05] * 3 and fake.looks == 4
    assert doors.wait() == 0.0 and (doors.waits, doors.waited_s) == (1, pytest.approx(0.15))


def test_the_build_never_waits_longer_than_its_cap_per_photo_nor_when_turned_off() -> None:
    fake = _Doors(busy=1000)
    doors = DoorsFirst(busy_age_s=0.15, max_s=0.12, step_s=0.05, backlog=fake.backlog, sleep=fake.slept.append)
    assert doors.wait() == pytest.approx(0.12) and fake.slept == pytest.approx([0.05, 0.05, 0.02])
    off = DoorsFirst(busy_age_s=0, max_s=2.0, backlog=fake.backlog, sleep=fake.slept.append)
    looks = fake.looks
    assert off.wait() == 0.0 and fake.looks == looks  # no query at all


@pytest.mark.slow  # 2 s on its own after the model's load (3.6 s); 12 s with both cores busy elsewhere
@pytest.mark.dataset("lfw")
@pytest.mark.django_db
@pytest.mark.usefixtures("casia_loaded")
def test_a_build_yields_before_each_photo_while_a_door_waits(enrol_env: Path) -> None:
    """The real query, in the real build loop: with a detection staged (and never decided here)
    each photo waits for at most the cap, then the build goes on and finishes."""
    for name in ("Colin_Powell", "George_W_Bush"):
        _enrol(name)
    migration = gallery_migration_start(model=ModelVersion.objects.get(model_version=CASIA), activate=False)
    _staged(1.0)
    slept: list[float] = []
    doors = DoorsFirst(busy_age_s=0.15, max_s=0.1, step_s=0.05, sleep=slept.append)
    assert gallery_migration_run(migration_id=migration.pk, batch=2, rate=0, doors=doors) is False
    assert (doors.waits, len(slept)) == (2, 4) and doors.waited_s == pytest.approx(0.2)
    migration.refresh_from_db()
    assert (migration.state, migration.done, migration.total) == (GalleryMigration.State.DONE, 2, 2)


def test_the_autogroup_nice_is_raised_only_for_a_session_of_its_own(tmp_path: Path) -> None:
    knob = tmp_path / "autogroup"
    knob.write_text("/autogroup-7 nice 0\n")
    assert autogroup_nice_raise(10, own_session=False, autogroup=knob) == 0  # a shell's or supervisor's session
    assert knob.read_text() == "/autogroup-7 nice 0\n"
    autogroup_nice_raise(10, own_session=True, autogroup=knob)
    assert knob.read_text() == "10"  # what the kernel takes (it reads back "/autogroup-7 nice 10")
    knob.write_text("/autogroup-7 nice 15\n")
    assert autogroup_nice_raise(10, own_session=True, autogroup=knob) == 15  # never lowered
    assert autogroup_nice_raise(10, own_session=True, autogroup=tmp_path / "absent") is None
    # A Celery pool process whose main process leads the session, or a solo worker leading it.
    assert session_is_own(pid=20, ppid=10, sid=10) and session_is_own(pid=20, ppid=10, sid=20)
    assert not session_is_own(pid=20, ppid=10, sid=3)  # a shell's session, shared with others
