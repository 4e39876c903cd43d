"""Edge detection throughput: MTCNN at 640x480 with torch limited to 2 threads (door-device budget).

Prints frames per second for the detector alone and for the agent's per-frame work (detect,
align, quality, track). Run: ``.venv/bin/python bench/edge_fps.py [--frames 30] [--threads 2]``.
Uses an LFW photo pasted into a 640x480 frame when LFW is found (tests/faces.py: ACCESSCTL_LFW,
ACCESSCTL_RESEARCH_DATA or var/datasets/lfw), else skimage's astronaut.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faces import LFW_DIR as LFW  # noqa: E402


def test_frame() -> np.ndarray:
    photos = sorted(LFW.glob("*/*.jpg"))[:1] if LFW.is_dir() else []
    if photos:
        face = Image.open(photos[0]).convert("RGB").resize((220, 220))
    else:
        from skimage import data

        face = Image.fromarray(data.astronaut()).resize((300, 300))
    canvas = Image.new("RGB", (640, 480), (90, 90, 90))
    canvas.paste(face, (210, 120))
    return np.asarray(canvas, dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-face-px", type=int, default=60)
    args = parser.parse_args()

    import torch

    from edge_agent.tracker import IouTracker
    from edge_agent.vision import MtcnnDetector, prepare

    torch.set_num_threads(args.threads)
    frame = test_frame()
    detector = MtcnnDetector(min_face_px=args.min_face_px, threads=args.threads)
    t0 = time.perf_counter()
    faces = detector.detect(frame)  # warm-up (model build)
    print(f"model load + first frame: {time.perf_counter() - t0:.2f} s, faces found: {len(faces)}")
    for _ in range(5):  # warm-up: allocator, oneDNN kernels
        detector.detect(frame)

    t0 = time.perf_counter()
    for _ in range(args.frames):
        detector.detect(frame)
    detect_s = (time.perf_counter() - t0) / args.frames

    tracker: IouTracker[object] = IouTracker()
    t0 = time.perf_counter()
    for i in range(args.frames):
        cands = prepare(frame, detector.detect(frame), min_face_px=args.min_face_px, min_score=0.9)
        tracker.update([(c.face.box, c.rank, c) for c in cands], ts=i * 0.1)
    pipeline_s = (time.perf_counter() - t0) / args.frames

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, frame 640x480, {args.frames} frames")
    print(f"detector only:            {detect_s * 1000:7.1f} ms/frame  {1 / detect_s:6.2f} FPS")
    print(f"detect+align+quality+track: {pipeline_s * 1000:5.1f} ms/frame  {1 / pipeline_s:6.2f} FPS")


if __name__ == "__main__":
    main()
