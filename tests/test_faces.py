"""The research-data helper (tests/faces.py): a missing data set skips locally and fails under CI=true."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faces import dataset_dir, dataset_require

_Failed = pytest.fail.Exception
_Skipped = pytest.skip.Exception


def _lfw(root: Path) -> Path:
    (root / "images" / "Ada_Lovelace").mkdir(parents=True)
    (root / "images" / "Ada_Lovelace" / "Ada_Lovelace_0001.jpg").write_bytes(b"jpeg")
    return root


def test_a_named_folder_is_found(tmp_path: Path) -> None:
    lfw = _lfw(tmp_path / "lfw")
    assert dataset_require("lfw", {"ACCESSCTL_LFW": str(lfw), "CI": "true"}) == lfw.resolve()
    assert dataset_dir("lfw", {"ACCESSCTL_LFW": str(lfw / "images")}) == (lfw / "images").resolve()


def test_the_shared_data_folder_is_found(tmp_path: Path) -> None:
    _lfw(tmp_path / "lfw")
    (tmp_path / "celeba-dev" / "id1").mkdir(parents=True)
    (tmp_path / "celeba-dev" / "id1" / "000001.jpg").write_bytes(b"jpeg")
    environ = {"ACCESSCTL_RESEARCH_DATA": str(tmp_path)}
    assert dataset_dir("lfw", environ) == (tmp_path / "lfw").resolve()
    assert dataset_dir("celeba-dev", environ) == (tmp_path / "celeba-dev").resolve()
    assert dataset_dir("nuaa-dev", environ) is None


def test_a_missing_data_set_skips_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCESSCTL_LFW", str(tmp_path / "nowhere"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(_Skipped, match=r"lfw not found at .*nowhere; set ACCESSCTL_LFW .*manage.py evaluate_lfw"):
        dataset_require("lfw")


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_data_set_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("ACCESSCTL_LFW", str(tmp_path / "nowhere"))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(_Failed, match=r"CI=true and lfw not found at .*nowhere"):
        dataset_require("lfw")


def test_an_empty_folder_is_not_the_data_set(tmp_path: Path) -> None:
    (tmp_path / "lfw" / "images").mkdir(parents=True)
    with pytest.raises(_Failed):
        dataset_require("lfw", {"ACCESSCTL_LFW": str(tmp_path / "lfw"), "CI": "true"})


@pytest.mark.dataset("lfw")
def test_the_marker_hands_lfw_to_the_test() -> None:
    from tests.faces import LFW_DIR

    assert next(LFW_DIR.glob("*/*.jpg"), None) is not None
