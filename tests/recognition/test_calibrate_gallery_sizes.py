"""``manage.py calibrate_threshold`` reports the threshold per gallery size (and says which sizes its
pairs cannot resolve), on a small labelled folder cut from LFW."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.faces import PEOPLE, face_paths

pytestmark = [pytest.mark.dataset("lfw"), pytest.mark.slow]


def test_thresholds_per_gallery_size(tmp_path: Path) -> None:
    for person in PEOPLE:
        (tmp_path / "folder" / person).mkdir(parents=True)
        for path in face_paths(person, 4):
            shutil.copyfile(path, tmp_path / "folder" / person / path.name)
    out = io.StringIO()
    call_command(
        "calibrate_threshold", "--folder", str(tmp_path / "folder"), "--dry-run", "--target-fmr", "0.05",
        "--gallery-sizes", "1,2,1000", "--target-stranger-acceptance", "0.5", "--cache-dir", str(tmp_path / "cache"),
        stdout=out,
    )  # fmt: skip
    lines = {line.split(" people:")[0].strip(): line for line in out.getvalue().splitlines() if " people:" in line}
    assert set(lines) == {"1", "2", "1000"}
    one, two = (float(lines[n].split("threshold ")[1].split()[0]) for n in ("1", "2"))
    assert one < two  # a bigger gallery needs a higher threshold for the same stranger acceptance
    assert "not resolvable" in lines["1000"]  # 160 impostor pairs cannot say
