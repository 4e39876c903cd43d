"""YuNet against MTCNN on real frames: faces found, box and landmark agreement, liveness figures.

Two sets of 640x480 frames: the nuaa-dev webcam captures (live and printed-photo presentations,
tests/faces.py finds them) and LFW photos pasted into a grey 640x480 frame (at their own 250 px and
halved to 125 px, the face then ~50 px). For each frame both detectors run (MTCNN as the edge agent
runs it for ``--min-face-px``, YuNet on the full frame) and the script reports:

- faces found: frames where a face of at least ``--min-face-px`` passes the agent's score filter
  (MTCNN >= 0.9; YuNet at several thresholds, its scores being lower than MTCNN's);
- agreement on the largest face: IoU of the boxes, landmark distance over the inter-ocular
  distance, and the box convention: MTCNN's box expressed in YuNet's (centre shift over YuNet's
  width/height, width and height ratios; medians over both sets): ``faceengine.yunet.BoxMap``;
- liveness on nuaa-dev: APCER/BPCER of the scorer at ``--threshold`` (the calibrated 0.0501 by
  default) with MTCNN's boxes, YuNet's raw boxes and YuNet's boxes mapped to MTCNN's convention.

Run: ``.venv/bin/python bench/detector_compare.py [--lfw 300] [--every 1] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faces import LFW_DIR, dataset_dir  # noqa: E402

YUNET_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def lfw_frames(n: int) -> list[tuple[str, np.ndarray]]:
    """``n`` LFW photos (one per person, sorted) pasted into 640x480 at 250 px and at 125 px."""
    people = sorted(p for p in LFW_DIR.iterdir() if p.is_dir())
    step = max(1, len(people) // max(n, 1))
    frames = []
    for person in people[::step][:n]:
        photo = sorted(person.glob("*.jpg"))[0]
        with Image.open(photo) as img:
            face = img.convert("RGB")
        for size in (250, 125):
            canvas = Image.new("RGB", (640, 480), (110, 110, 110))
            canvas.paste(face.resize((size, size), Image.Resampling.BILINEAR), (320 - size // 2, 240 - size // 2))
            frames.append((f"{photo.name}@{size}", np.asarray(canvas, dtype=np.uint8)))
    return frames


def largest(faces: list) -> object | None:
    return max(faces, key=lambda f: f.area) if faces else None


def iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_relation(yun: np.ndarray, mt: np.ndarray) -> tuple[float, float, float, float]:
    """MTCNN's box in YuNet's terms: centre shift / YuNet width, / height; width, height ratios."""
    yw, yh = yun[2] - yun[0], yun[3] - yun[1]
    mw, mh = mt[2] - mt[0], mt[3] - mt[1]
    dx = ((mt[0] + mt[2]) / 2 - (yun[0] + yun[2]) / 2) / yw
    dy = ((mt[1] + mt[3]) / 2 - (yun[1] + yun[3]) / 2) / yh
    return float(dx), float(dy), float(mw / yw), float(mh / yh)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lfw", type=int, default=300, help="LFW people (two frames each)")
    parser.add_argument("--every", type=int, default=1, help="one nuaa-dev frame in K")
    parser.add_argument("--min-face-px", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.0501, help="liveness threshold (calibrated)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from edge_agent.vision import detector_min_face_px
    from faceengine.detector import FaceDetector
    from faceengine.liveness import evaluation
    from faceengine.liveness.scorer import get_scorer
    from faceengine.yunet import BoxMap, YunetDetector

    mtcnn = FaceDetector(min_face_size=detector_min_face_px(args.min_face_px), num_threads=args.threads)
    yunet = YunetDetector(score_threshold=min(YUNET_THRESHOLDS), num_threads=args.threads)

    nuaa = dataset_dir("nuaa-dev")
    presentations = evaluation.dataset_scan(nuaa, every=args.every) if nuaa is not None else []
    sets: dict[str, list[tuple[str, np.ndarray, object]]] = {"nuaa-dev": [], "lfw-640x480": []}
    for p in presentations:
        sets["nuaa-dev"].append((str(p.path), evaluation.image_load(p.path), p))
    if LFW_DIR.is_dir():
        sets["lfw-640x480"] = [(name, rgb, None) for name, rgb in lfw_frames(args.lfw)]

    report: dict[str, object] = {"min_face_px": args.min_face_px, "sets": {}}
    rows: dict[str, list[dict]] = {}
    ms = {"mtcnn": [], "yunet": []}
    for set_name, frames in sets.items():
        out = []
        for name, rgb, pres in frames:
            t0 = time.perf_counter()
            m_faces = [f for f in mtcnn.detect(rgb) if f.size >= args.min_face_px]
            t1 = time.perf_counter()
            y_faces = [f for f in yunet.detect(rgb) if f.size >= args.min_face_px]
            t2 = time.perf_counter()
            ms["mtcnn"].append((t1 - t0) * 1000)
            ms["yunet"].append((t2 - t1) * 1000)
            out.append({"name": name, "rgb": rgb, "pres": pres, "m": m_faces, "y": y_faces})
        rows[set_name] = out
        print(f"{set_name}: {len(out)} frames detected", file=sys.stderr, flush=True)

    relations, nmes = [], []
    for set_name, out in rows.items():
        n = len(out)
        found_m = sum(1 for r in out if any(f.score >= 0.9 for f in r["m"]))
        found_y = {t: sum(1 for r in out if any(f.score >= t for f in r["y"])) for t in YUNET_THRESHOLDS}
        both, ious, set_nme, set_rel = 0, [], [], []
        for r in out:
            fm, fy = largest(r["m"]), largest(r["y"])
            if fm is None or fy is None:
                continue
            both += 1
            ious.append(iou(fy.box, fm.box))
            iod = float(np.linalg.norm(fm.landmarks[0] - fm.landmarks[1]))
            set_nme.append(float(np.mean(np.linalg.norm(fy.landmarks - fm.landmarks, axis=1)) / max(iod, 1e-6)))
            if ious[-1] > 0.5:
                set_rel.append(box_relation(fy.box, fm.box))
        relations += set_rel
        nmes += set_nme
        rel = np.asarray(set_rel) if set_rel else np.zeros((0, 4))
        report["sets"][set_name] = {  # type: ignore[index]
            "frames": n,
            "mtcnn_found": found_m,
            "yunet_found": found_y,
            "both_found": both,
            "iou_median": float(np.median(ious)) if ious else None,
            "iou_below_0_5": int(sum(i < 0.5 for i in ious)),
            "landmark_nme_median": float(np.median(set_nme)) if set_nme else None,
            "landmark_nme_p95": float(np.percentile(set_nme, 95)) if set_nme else None,
            "mtcnn_box_in_yunet_terms_median": np.median(rel, axis=0).tolist() if len(rel) else None,
            "yunet_scores_p1_p5_p50": (
                np.percentile([largest(r["y"]).score for r in out if r["y"]], [1, 5, 50]).tolist()
                if any(r["y"] for r in out)
                else None
            ),
        }
    rel_all = np.asarray(relations)
    fit = BoxMap(*np.median(rel_all, axis=0).tolist()) if len(rel_all) else BoxMap()
    report["box_map_fit"] = fit.__dict__
    report["landmark_nme_median_all"] = float(np.median(nmes)) if nmes else None
    report["ms_per_frame_median"] = {k: float(np.median(v)) for k, v in ms.items() if v}

    # Liveness on nuaa-dev with the three boxes (largest face; YuNet faces at its lowest threshold)
    if rows["nuaa-dev"]:
        scorer = get_scorer(num_threads=args.threads)
        variants = {"mtcnn": [], "yunet_raw": [], "yunet_mapped": []}
        for r in rows["nuaa-dev"]:
            fm, fy = largest(r["m"]), largest(r["y"])
            for key, box in (
                ("mtcnn", None if fm is None else fm.box),
                ("yunet_raw", None if fy is None else fy.box),
                ("yunet_mapped", None if fy is None else fit.apply(fy.box)),
            ):
                score = None if box is None else float(scorer.score(r["rgb"], np.asarray(box)[None])[0])
                variants[key].append(evaluation.ScoredPresentation(r["pres"], score))
        report["liveness"] = {}
        for key, scored in variants.items():
            pad = evaluation.pad_report(scored, args.threshold, model_version=scorer.model_version)
            d = pad.as_dict()
            report["liveness"][key] = {  # type: ignore[index]
                k: d[k] for k in ("apcer", "bpcer", "threshold", "n_live", "n_attack", "not_detected") if k in d
            } | {"per_subject": d.get("per_subject")}
            th = evaluation.calibrate(scored, 0.01)
            report["liveness"][key]["recalibrated_threshold_apcer_1pct"] = th  # type: ignore[index]
            report["liveness"][key]["bpcer_at_recalibrated"] = evaluation.pad_report(scored, th).bpcer  # type: ignore[index]

    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
