"""Fit (and check) how YuNet's boxes are redrawn in MTCNN's convention for the liveness crop.

``faceengine/onet_refine.py`` moves YuNet's box by a fixed ``BoxMap`` and then lets MTCNN's R-Net
and O-Net draw the final box. This script fits that map on LFW faces (never on nuaa-dev, which stays the
liveness evaluation set) and prints how close each way of redrawing comes to MTCNN's own box
(the box the liveness networks were calibrated with) on the same frames:

- ``yunet``: YuNet's raw box; ``map``: the median MTCNN-in-YuNet-terms ``BoxMap`` alone;
- ``onet``: O-Net on YuNet's box; ``onet+map``: O-Net on the mapped box (``passes`` 1 and 2);
- ``rnet+onet`` (what the agent ships) and ``rnet+onet+map``: R-Net then O-Net, as MTCNN chains them.

For each: median IoU with MTCNN's box, median |centre shift| / MTCNN's size, median size ratio,
and the liveness window's (scale 2.7) IoU with MTCNN's window, whose agreement is what matters.
Frames: LFW photos pasted into a grey 640x480 frame at 250 px and at 125 px (as
``bench/detector_compare.py``). Prints the fitted map as the ``BoxMap(...)`` to paste into
``faceengine.onet_refine.YUNET_TO_ONET_INPUT``.

Run: ``.venv/bin/python bench/onet_refine_fit.py [--lfw 150] [--threads 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from detector_compare import box_relation, iou, largest, lfw_frames  # noqa: E402

from tests.faces import LFW_DIR  # noqa: E402


def agreement(boxes: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    """How ``boxes`` agree with ``reference`` (MTCNN's): medians over the faces."""
    from faceengine.liveness.crop import crop_window

    ious, shifts, sizes, windows = [], [], [], []
    for box, ref in zip(boxes, reference, strict=True):
        ious.append(iou(box, ref))
        rw, rh = ref[2] - ref[0], ref[3] - ref[1]
        shift = np.hypot(((box[0] + box[2]) - (ref[0] + ref[2])) / 2, ((box[1] + box[3]) - (ref[1] + ref[3])) / 2)
        shifts.append(float(shift / np.sqrt(rw * rh)))
        sizes.append(float(np.sqrt((box[2] - box[0]) * (box[3] - box[1]) / (rw * rh))))
        windows.append(iou(np.asarray(crop_window(box, 2.7, 640, 480)), np.asarray(crop_window(ref, 2.7, 640, 480))))
    return {
        "iou_median": float(np.median(ious)),
        "iou_p5": float(np.percentile(ious, 5)),
        "centre_shift_median": float(np.median(shifts)),
        "size_ratio_median": float(np.median(sizes)),
        "window_iou_median": float(np.median(windows)),
        "window_iou_p5": float(np.percentile(windows, 5)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lfw", type=int, default=150, help="LFW people (two frames each)")
    parser.add_argument("--min-face-px", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not LFW_DIR.is_dir():
        sys.exit(f"LFW not found at {LFW_DIR} (tests/faces.py says where it is looked for)")

    import torch

    from edge_agent.vision import detector_min_face_px
    from faceengine.detector import FaceDetector
    from faceengine.onet_refine import OnetBoxRefiner
    from faceengine.yunet import BoxMap, YunetDetector

    torch.set_num_threads(args.threads)
    mtcnn = FaceDetector(min_face_size=detector_min_face_px(args.min_face_px), num_threads=args.threads)
    yunet = YunetDetector(num_threads=args.threads)
    pairs = []
    t0 = time.perf_counter()
    for _name, rgb in lfw_frames(args.lfw):
        fm = largest([f for f in mtcnn.detect(rgb) if f.size >= args.min_face_px])
        fy = largest([f for f in yunet.detect(rgb) if f.size >= args.min_face_px])
        if fm is not None and fy is not None and iou(fy.box, fm.box) > 0.5:
            pairs.append((rgb, fy.box.astype(np.float64), fm.box.astype(np.float64)))
    print(f"{len(pairs)} LFW frames with both faces, detected in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    fit = BoxMap(*np.median([box_relation(y, m) for _rgb, y, m in pairs], axis=0).round(4).tolist())
    reference = [m for _rgb, _y, m in pairs]
    variants = {
        "yunet": lambda rgb, box: box,
        "map": lambda rgb, box: fit.apply(box),
    }
    for passes in (1, 2):
        for label, input_map in (("onet", BoxMap()), ("onet+map", fit)):
            refiner = OnetBoxRefiner(input_map=input_map, passes=passes, rnet=False)
            variants[f"{label} x{passes}"] = lambda rgb, box, refiner=refiner: refiner(rgb, [box])[0]
    for label, input_map in (("rnet+onet", BoxMap()), ("rnet+onet+map", fit)):  # the shipped chain: R-Net, O-Net
        refiner = OnetBoxRefiner(input_map=input_map)
        variants[label] = lambda rgb, box, refiner=refiner: refiner(rgb, [box])[0]
    report: dict[str, object] = {"frames": len(pairs), "box_map_fit": fit.__dict__, "variants": {}}
    for label, redraw in variants.items():
        boxes = [np.asarray(redraw(rgb, y), dtype=np.float64) for rgb, y, _m in pairs]
        report["variants"][label] = agreement(boxes, reference)  # type: ignore[index]
    start = time.perf_counter()
    refiner = OnetBoxRefiner()
    for rgb, y, _m in pairs:
        refiner(rgb, [y])
    report["rnet_onet_ms_per_face"] = (time.perf_counter() - start) * 1000 / max(len(pairs), 1)
    print(json.dumps(report, indent=1))
    print(f"fitted: YUNET_TO_ONET_INPUT = BoxMap(dx={fit.dx}, dy={fit.dy}, sw={fit.sw}, sh={fit.sh})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
