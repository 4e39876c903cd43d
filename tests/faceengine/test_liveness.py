"""The liveness scorer: network loading, the crop, batching, and the figures on research photos.

The photo tests read research data beside the checkout (``../shared``): they fail under
``CI=true`` when it is missing and are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.management import call_command

from faceengine.detector import FaceDetector
from faceengine.liveness import evaluation, onnx_export
from faceengine.liveness.crop import crop_region, crop_window, resize_bilinear
from faceengine.liveness.network import (
    LIVE_CLASS,
    MINIFASNET_V1SE,
    MINIFASNET_V2,
    MiniFASNet,
    state_dict_unwrap,
)
from faceengine.liveness.scorer import (
    DEFAULT_MODELS,
    PAD_MODELS,
    WEIGHTS_DIR,
    LivenessScorer,
    LivenessWeightsError,
    get_scorer,
)

ROOT = Path(__file__).resolve().parent.parent.parent
SHARED = ROOT.parent / "shared"
SAMPLES = ("models", "minifasnet", "samples")
NUAA_DEV = ("data", "nuaa-dev")


def shared_data(*parts: str) -> Path:
    """A research-data path under ../shared: a failure under CI=true when missing, else a skip."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"needs research data at ../shared/{'/'.join(parts)} (beside the checkout; never copied in)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def scorer() -> LivenessScorer:
    return get_scorer(num_threads=2)


def _frame(seed: int = 0, height: int = 480, width: int = 640) -> np.ndarray:
    """A textured synthetic frame (smooth gradients plus noise) so that crops differ by position."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def test_importing_the_scorer_needs_neither_django_nor_torch() -> None:
    """The engine is Django-free (the edge agent imports it); the onnxruntime scorer scores without
    torch (an agent with YuNet and the detector's boxes needs no torch at all)."""
    code = (
        "import sys, numpy as np, faceengine.liveness, faceengine.liveness.evaluation; "
        "print(sorted(m for m in ('django', 'torch') if m in sys.modules)); "
        "s = faceengine.liveness.get_scorer(backend='onnx'); "
        "s.score(np.zeros((48, 64, 3), np.uint8), [(20, 10, 40, 30)]); "
        "print(sorted(m for m in ('django', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "[]"]


# --- the networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "widths"), [("MiniFASNetV2", MINIFASNET_V2), ("MiniFASNetV1SE", MINIFASNET_V1SE)])
def test_the_shipped_state_dicts_load_strictly(name: str, widths: object) -> None:
    state = torch.load(WEIGHTS_DIR / PAD_MODELS[name].filename, map_location="cpu", weights_only=True)
    assert all(key.startswith("module.") for key in state)  # saved from DataParallel
    network = MiniFASNet(widths).eval()  # type: ignore[arg-type]
    network.load_state_dict(state_dict_unwrap(state), strict=True)
    with torch.inference_mode():
        logits = network(torch.rand(4, 3, 80, 80) * 255)
    assert logits.shape == (4, 3)
    assert torch.isfinite(logits).all()


def test_folding_the_batch_norms_keeps_the_outputs() -> None:
    state = torch.load(WEIGHTS_DIR / PAD_MODELS["MiniFASNetV1SE"].filename, map_location="cpu", weights_only=True)
    network = MiniFASNet(MINIFASNET_V1SE).eval()
    network.load_state_dict(state_dict_unwrap(state))
    x = torch.rand(3, 3, 80, 80) * 255
    with torch.inference_mode():
        before = torch.softmax(network(x), dim=1)
        after = torch.softmax(network.fuse()(x), dim=1)
    assert torch.allclose(before, after, atol=1e-4)
    with pytest.raises(RuntimeError, match="eval"):
        MiniFASNet(MINIFASNET_V2).fuse()  # training mode: running statistics not meant to be frozen


def test_weights_that_are_not_the_shipped_ones_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LivenessWeightsError, match="not found"):
        LivenessScorer(tmp_path)
    for spec in PAD_MODELS.values():  # the state dicts (torch) and their ONNX exports, each pinned
        shutil.copy(WEIGHTS_DIR / spec.filename, tmp_path / spec.filename)
        shutil.copy(WEIGHTS_DIR / spec.onnx_filename, tmp_path / spec.onnx_filename)
    with (tmp_path / PAD_MODELS["MiniFASNetV2"].filename).open("ab") as fh:
        fh.write(b"\0")
    with (tmp_path / PAD_MODELS["MiniFASNetV1SE"].onnx_filename).open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(LivenessWeightsError, match="SHA-256"):
        LivenessScorer(tmp_path, backend="torch")
    with pytest.raises(LivenessWeightsError, match="SHA-256"):
        LivenessScorer(tmp_path, backend="onnx")
    with pytest.raises(ValueError, match="unknown"):
        LivenessScorer(models=["MiniFASNetV3"])
    with pytest.raises(ValueError, match="CPU"):
        LivenessScorer(backend="onnx", device="cuda")


def test_one_scorer_per_process(scorer: LivenessScorer) -> None:
    assert get_scorer(num_threads=2) is scorer
    assert get_scorer(WEIGHTS_DIR, num_threads=2) is scorer
    assert get_scorer(num_threads=2, backend="onnx") is scorer
    assert tuple(spec.name for spec in scorer.specs) == DEFAULT_MODELS
    assert scorer.backend == "onnx"  # onnxruntime is installed: the faster backend by default
    with pytest.raises(ValueError, match="backend"):
        get_scorer(backend="tensorrt")


# --- the ONNX export ------------------------------------------------------------------------------


def test_the_shipped_onnx_files_score_as_the_state_dicts(scorer: LivenessScorer) -> None:
    """onnxruntime on the shipped exports gives torch's probabilities on the shipped state dicts."""
    reference = get_scorer(num_threads=2, backend="torch")
    assert reference is not scorer and reference.backend == "torch"
    frame = _frame(seed=5)
    boxes = np.array([[100, 100, 180, 200], [0, 300, 90, 470], [560, 0, 640, 90], [300, 150, 420, 300]])
    np.testing.assert_allclose(scorer.probabilities(frame, boxes), reference.probabilities(frame, boxes), atol=1e-4)
    # two threads: the two networks side by side, one thread each; the same scores as in turn
    assert scorer.parallel and not LivenessScorer(num_threads=1, backend="onnx").parallel
    in_turn = LivenessScorer(num_threads=1, backend="onnx")
    np.testing.assert_allclose(scorer.probabilities(frame, boxes), in_turn.probabilities(frame, boxes), atol=1e-6)


@pytest.mark.slow
def test_the_onnx_export_is_reproducible_from_the_state_dicts(tmp_path: Path) -> None:
    """``python -m faceengine.liveness.onnx_export`` rebuilds the shipped files from the .pth files:
    the same bytes with the torch that wrote them, the same outputs (within tolerance) in any case."""
    digests = onnx_export.export_all(tmp_path)
    for name, digest in digests.items():
        spec = PAD_MODELS[name]
        fresh = onnx_export.onnx_session(tmp_path / spec.onnx_filename)
        shipped = onnx_export.onnx_session(WEIGHTS_DIR / spec.onnx_filename)
        batch = onnx_export.check_batch(seed=7)
        np.testing.assert_allclose(
            fresh.run(None, {"input": batch})[0], shipped.run(None, {"input": batch})[0], atol=1e-4
        )
        if torch.__version__.startswith("2.13."):
            assert digest == spec.onnx_sha256


# --- the crop -------------------------------------------------------------------------------------


def test_the_window_is_scale_times_the_box_around_its_centre() -> None:
    assert crop_window((300, 200, 340, 240), 2.7, 640, 480) == (266, 166, 374, 274)
    assert crop_window((300, 200, 340, 250), 4.0, 640, 480) == (240, 125, 400, 325)  # keeps the aspect ratio


def test_a_window_crossing_the_border_is_shifted_inside_not_padded() -> None:
    # Face at the left edge: the window keeps its size and starts at 0.
    assert crop_window((0, 200, 40, 240), 4.0, 640, 480) == (0, 140, 160, 300)
    # Face at the bottom-right corner.
    assert crop_window((600, 440, 640, 480), 4.0, 640, 480) == (480, 320, 640, 480)
    # A box so large that scale x box exceeds the frame: the scale shrinks to fit the frame.
    x1, y1, x2, y2 = crop_window((100, 40, 500, 440), 4.0, 640, 480)
    assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
    assert y2 - y1 == pytest.approx(479, abs=1)
    # Degenerate and out-of-frame boxes still give a non-empty region inside the frame.
    frame = _frame()
    for box in [(10, 10, 10, 10), (-50, -50, -10, -10), (700, 500, 720, 520)]:
        region = crop_region(frame, box, 2.7)
        assert region.shape[0] >= 1 and region.shape[1] >= 1


def test_the_resize_is_opencvs_bilinear() -> None:
    cv2 = pytest.importorskip("cv2")
    frame = _frame(seed=3)
    for shape in [(455, 640), (80, 80), (57, 41), (300, 211)]:
        region = np.ascontiguousarray(frame[: shape[0], : shape[1]])
        ours = resize_bilinear(region, 80, 80)
        theirs = cv2.resize(region, (80, 80), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        assert np.abs(np.rint(ours) - theirs).max() <= 1.0


def test_the_networks_get_bgr_crops_of_the_full_frame(scorer: LivenessScorer) -> None:
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    frame[:, :, 0] = 200  # red in RGB
    crops = scorer.crops(frame, [(300, 200, 340, 240)], 2.7)
    assert crops.shape == (1, 3, 80, 80) and crops.dtype == np.float32
    assert crops.flags.c_contiguous
    assert np.all(crops[0, 2] == 200) and np.all(crops[0, :2] == 0)  # BGR: red is the last channel


# --- scoring --------------------------------------------------------------------------------------


def test_a_batch_scores_as_the_single_faces(scorer: LivenessScorer) -> None:
    frame = _frame(seed=1)
    boxes = np.array([[100, 100, 180, 200], [0, 300, 90, 470], [560, 0, 640, 90], [300, 150, 420, 300]])
    batch = scorer.score(frame, boxes)
    singles = np.array([scorer.score(frame, box[None])[0] for box in boxes])
    assert batch.shape == (4,) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, singles, atol=1e-4)
    assert np.all((batch >= 0) & (batch <= 1))
    probabilities = scorer.probabilities(frame, boxes)
    assert probabilities.shape == (2, 4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=2), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities[:, :, LIVE_CLASS].mean(axis=0), batch, atol=1e-6)


def test_no_box_no_score_and_bad_input_refused(scorer: LivenessScorer) -> None:
    assert scorer.score(_frame(), []).shape == (0,)
    assert scorer.score(_frame(), np.zeros((0, 4))).shape == (0,)
    with pytest.raises(ValueError, match="RGB frame"):
        scorer.score(np.zeros((480, 640), dtype=np.uint8), [(0, 0, 10, 10)])
    with pytest.raises(ValueError, match="finite"):
        scorer.score(_frame(), [(0, 0, np.nan, 10)])


# --- APCER / BPCER --------------------------------------------------------------------------------


def _scored(live: dict[str, list[float]], attack: dict[str, list[float | None]]) -> list:
    out = []
    for is_attack, table in ((False, live), (True, attack)):
        for subject, scores in table.items():
            for i, score in enumerate(scores):
                p = evaluation.Presentation(Path(f"{subject}-{is_attack}-{i}.jpg"), subject, is_attack)
                out.append(evaluation.ScoredPresentation(p, score, 2.0))
    return out


def test_apcer_bpcer_per_subject_and_overall() -> None:
    scored = _scored(
        live={"a": [0.9, 0.8, 0.2, 0.95], "b": [0.7, 0.6]},
        attack={"a": [0.1, 0.6, 0.05, None], "b": [0.3, 0.2, 0.1, 0.55]},
    )
    report = evaluation.pad_report(scored, 0.5, model_version="m")
    assert report.n_live == 6 and report.n_attack == 7 and report.not_detected == 1
    assert report.apcer == pytest.approx(2 / 7)
    assert report.bpcer == pytest.approx(1 / 6)
    assert report.per_subject["a"] == {"apcer": 1 / 3, "bpcer": 0.25, "n_live": 4, "n_attack": 3, "not_detected": 1}
    assert report.per_subject["b"]["apcer"] == 0.25 and report.per_subject["b"]["bpcer"] == 0.0
    assert report.ms_per_face == 2.0
    assert set(report.as_dict()) >= {"apcer", "bpcer", "threshold", "n_live", "n_attack", "not_detected"}
    assert "APCER 28.57% of 7 attacks" in report.summary()


def test_threshold_for_a_target_apcer() -> None:
    attacks = np.linspace(0.0, 0.99, 100)
    threshold = evaluation.threshold_for_apcer(attacks, 0.01)
    assert evaluation.apcer(attacks, threshold) == 0.01  # one attack of 100 may pass
    assert evaluation.apcer(attacks, attacks[-2]) == 0.02  # any lower threshold lets a second one pass
    assert evaluation.apcer(attacks, evaluation.threshold_for_apcer(attacks, 0.0)) == 0.0
    assert evaluation.threshold_for_apcer(np.array([0.3, 0.3, 0.3]), 0.0) > 0.3  # ties are all rejected
    with pytest.raises(ValueError, match="no attack"):
        evaluation.threshold_for_apcer(np.array([]), 0.01)
    # Per subject: the threshold holds for the subject whose attacks score highest.
    scored = _scored(live={"a": [0.9]}, attack={"a": [0.1] * 10, "b": [0.2] * 9 + [0.8]})
    assert evaluation.calibrate(scored, 0.06, per_subject=False) == pytest.approx(0.2, abs=1e-6)
    assert evaluation.calibrate(scored, 0.06) == pytest.approx(0.8, abs=1e-6)


def test_calibration_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "var" / evaluation.CALIBRATION_FILENAME
    report = evaluation.pad_report(_scored(live={"a": [0.9]}, attack={"a": [0.1]}), 0.42)
    evaluation.calibration_save(path, threshold=0.42, target_apcer=0.01, model_version="m1", report=report, data="d")
    assert evaluation.calibration_load(path, model_version="m1") == 0.42
    assert evaluation.calibration_load(path, model_version="m2") is None  # another model: not its threshold
    assert evaluation.calibration_load(tmp_path / "absent.json", model_version="m1") is None


# --- research photos ------------------------------------------------------------------------------


def test_the_sample_photos_live_and_attacks(scorer: LivenessScorer) -> None:
    samples = shared_data(*SAMPLES)
    detector = FaceDetector(num_threads=2)
    scores = {}
    for name in ("image_T1", "image_F1", "image_F2"):
        rgb = evaluation.image_load(samples / f"{name}.jpg")  # EXIF orientation: the photos are stored rotated
        faces = detector(rgb)
        assert len(faces) == 1, name
        scores[name] = float(scorer.score(rgb, faces)[0])
    assert scores["image_T1"] > 0.9
    assert scores["image_F1"] < 0.5 and scores["image_F2"] < 0.5


def _nuaa_subset(tmp_path: Path, per_folder: int = 3) -> Path:
    """A few nuaa-dev photos of two subjects, linked into the same layout."""
    nuaa = shared_data(*NUAA_DEV)
    root = tmp_path / "nuaa-subset"
    for kind in ("live", "print"):
        for subject in ("0001", "0004"):
            photos = sorted((nuaa / kind / subject).glob("*.jpg"))
            step = max(len(photos) // per_folder, 1)
            target = root / kind / subject
            target.mkdir(parents=True)
            for photo in photos[::step][:per_folder]:
                (target / photo.name).symlink_to(photo)
    return root


def test_evaluation_on_a_few_nuaa_photos(tmp_path: Path, scorer: LivenessScorer) -> None:
    root = _nuaa_subset(tmp_path)
    presentations = evaluation.dataset_scan(root)
    assert len(presentations) == 12
    scored = evaluation.presentations_score(presentations, scorer, FaceDetector(num_threads=2))
    report = evaluation.pad_report(scored, 0.5)
    assert report.not_detected == 0 and report.n_live == 6 and report.n_attack == 6
    assert report.apcer == 0.0 and report.bpcer == 0.0
    assert set(report.per_subject) == {"0001", "0004"}
    assert report.ms_per_face is not None and report.ms_per_face > 0


def test_the_commands_calibrate_then_evaluate(tmp_path: Path, settings: pytest.FixtureRequest) -> None:
    root = _nuaa_subset(tmp_path, per_folder=2)
    settings.VAR_DIR = tmp_path / "var"  # type: ignore[attr-defined]
    out, err = StringIO(), StringIO()
    call_command("calibrate_liveness", "--data", str(root), "--target-apcer", "0.01", "--save", stdout=out, stderr=err)
    threshold = float(out.getvalue().strip())
    assert 0 < threshold <= 1
    assert (tmp_path / "var" / evaluation.CALIBRATION_FILENAME).is_file()
    out = StringIO()
    call_command("evaluate_liveness", "--data", str(root), "--json", stdout=out, stderr=StringIO())
    result = json.loads(out.getvalue())
    assert result["threshold"] == pytest.approx(threshold)  # the calibrated one by default
    assert result["apcer"] == 0.0 and result["n_attack"] == 4 and result["n_live"] == 4
    assert {"bpcer", "not_detected", "ms_per_face", "per_subject"} <= set(result)
    out = StringIO()
    call_command("evaluate_liveness", "--data", str(root), "--threshold", "0.999999", stdout=out, stderr=StringIO())
    assert "threshold 1.0000" in out.getvalue()
    # Without a stored calibration: the threshold the doors apply, not some other default.
    (tmp_path / "var" / evaluation.CALIBRATION_FILENAME).unlink()
    settings.LIVENESS_THRESHOLD = 0.0123  # type: ignore[attr-defined]
    out, err = StringIO(), StringIO()
    call_command("evaluate_liveness", "--data", str(root), "--json", stdout=out, stderr=err)
    assert json.loads(out.getvalue())["threshold"] == pytest.approx(0.0123)
    assert "the doors' threshold" in err.getvalue()


def test_evaluate_with_yunet_cuts_windows_around_onet_s_boxes(tmp_path: Path) -> None:
    """``evaluate_liveness --detector yunet`` judges what the agent with YuNet sends ([liveness]
    boxes = "auto": O-Net's boxes), ``--boxes detector`` YuNet's own; MTCNN keeps its boxes."""
    from faceengine.yunet import YunetDetector
    from recognition.management.liveness_options import detector_for

    options = {"threads": 2, "detector": "mtcnn", "boxes": "auto"}
    assert isinstance(detector_for(options, 40), FaceDetector)
    assert isinstance(detector_for({**options, "detector": "yunet", "boxes": "detector"}, 40), YunetDetector)
    redrawn = detector_for({**options, "detector": "yunet"}, 40)
    assert not isinstance(redrawn, YunetDetector) and callable(redrawn)
    root = _nuaa_subset(tmp_path, per_folder=2)
    out = StringIO()
    call_command(
        "evaluate_liveness", "--data", str(root), "--detector", "yunet", "--json", stdout=out, stderr=StringIO()
    )
    result = json.loads(out.getvalue())
    assert result["n_attack"] == 4 and result["n_live"] == 4 and result["not_detected"] == 0
    assert result["apcer"] == 0.0 and result["bpcer"] == 0.0
    out = StringIO()  # tracks of one photo each: the same figures, through the track path
    call_command(
        "evaluate_liveness",
        "--data",
        str(root),
        "--detector",
        "yunet",
        "--track-frames",
        "1",
        "--json",
        stdout=out,
        stderr=StringIO(),
    )
    tracks = json.loads(out.getvalue())
    assert (tracks["n_attack"], tracks["n_live"], tracks["apcer"], tracks["bpcer"]) == (4, 4, 0.0, 0.0)


def _photo(name: str, score: float | None, *, attack: bool, subject: str = "0001") -> evaluation.ScoredPresentation:
    return evaluation.ScoredPresentation(evaluation.Presentation(Path(name), subject, attack), score, 1.0)


def test_capture_key_reads_nuaa_names() -> None:
    assert evaluation.capture_key(Path("0001_00_00_01_107.jpg")) == ("0001_00_00_01", 107)
    assert evaluation.capture_key(Path("photo.jpg")) == ("photo", 0)


def test_tracks_fuse_cuts_captures_into_runs_in_frame_order() -> None:
    """Runs of N detected faces of one capture, in frame-number order (not name order), fused;
    faces not detected skipped, a short remainder dropped, captures and kinds never mixed."""
    scored = [
        _photo("print/0001/0001_00_00_01_20.jpg", 0.9, attack=True),  # frame 20 sorts after 3
        _photo("print/0001/0001_00_00_01_3.jpg", 0.01, attack=True),
        _photo("print/0001/0001_00_00_01_5.jpg", 0.02, attack=True),
        _photo("print/0001/0001_00_00_01_7.jpg", None, attack=True),  # no face: skipped
        _photo("print/0001/0001_00_00_01_9.jpg", 0.03, attack=True),
        _photo("print/0001/0001_00_00_01_30.jpg", 0.8, attack=True),  # remainder of 1: dropped
        _photo("print/0001/0001_00_00_02_1.jpg", 0.5, attack=True),  # another capture: too short
        _photo("live/0001/0001_00_00_01_1.jpg", 0.9, attack=False),
        _photo("live/0001/0001_00_00_01_2.jpg", 0.95, attack=False),
    ]
    tracks = evaluation.tracks_fuse(scored, 2, "median")
    assert [(t.presentation.path.name, t.score) for t in tracks] == [
        ("0001_00_00_01_1.jpg", pytest.approx(0.925)),
        ("0001_00_00_01_3.jpg", pytest.approx(0.015)),
        ("0001_00_00_01_9.jpg", pytest.approx(0.465)),
    ]
    (print_track,) = [t for t in evaluation.tracks_fuse(scored, 4, "median") if t.presentation.attack]
    assert print_track.score == pytest.approx(0.025)  # 0.01, 0.02, 0.03, 0.9: the lucky frame ignored
    (print_track,) = [t for t in evaluation.tracks_fuse(scored, 4, "top_k", k=2) if t.presentation.attack]
    assert print_track.score == pytest.approx((0.9 + 0.03) / 2)
    report = evaluation.pad_report(evaluation.tracks_fuse(scored, 4, "median"), 0.05)
    assert report.n_attack == 1 and report.n_live == 0 and report.apcer == 0.0
    with pytest.raises(ValueError, match="frames"):
        evaluation.tracks_fuse(scored, 0, "median")
    with pytest.raises(ValueError, match="unknown liveness fusion"):
        evaluation.tracks_fuse(scored, 2, "max")


def test_the_evaluation_scores_only_faces_the_agent_would_send() -> None:
    """The largest face among those the detector scores >= min_detector_score (the agent's
    [detection] default): YuNet's large low-score boxes on a printed sheet are never sent."""
    from types import SimpleNamespace

    from edge_agent.config import DetectionSection

    assert DetectionSection().min_detector_score == evaluation.MIN_DETECTOR_SCORE
    sheet = SimpleNamespace(box=np.array([0.0, 0.0, 300.0, 330.0]), score=0.62)
    face = SimpleNamespace(box=np.array([260.0, 120.0, 380.0, 270.0]), score=0.93)
    np.testing.assert_array_equal(evaluation._largest_box([sheet, face], 0.9), face.box)
    np.testing.assert_array_equal(evaluation._largest_box([sheet, face]), sheet.box)  # no filter: the largest
    assert evaluation._largest_box([sheet], 0.9) is None  # counted as not detected
    np.testing.assert_array_equal(evaluation._largest_box([face.box], 0.9), face.box)  # bare boxes: no score to filter
