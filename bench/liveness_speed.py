"""Speed of the liveness scorer on this machine: ms per face for each PAD network and both fused.

    python bench/liveness_speed.py [--threads 2] [--repeat 200] [--batch 1 4]

Times ``LivenessScorer.score`` (full-frame crops + network) on a 640x480 frame, after a warm-up;
prints the median and the 10th percentile per face (the latter is closer to an idle machine's
figure when other processes share the CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faceengine.liveness.scorer import DEFAULT_MODELS, LivenessScorer, torch_threads_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 4])
    args = parser.parse_args()
    torch_threads_set(args.threads)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    box = np.array([260.0, 160.0, 380.0, 310.0])
    for models in [(name,) for name in DEFAULT_MODELS] + [DEFAULT_MODELS]:
        scorer = LivenessScorer(models=models, num_threads=args.threads)
        for batch in args.batch:
            boxes = np.repeat(box[None], batch, axis=0) + rng.uniform(-40, 40, (batch, 4))
            for _ in range(10):
                scorer.score(frame, boxes)
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                scorer.score(frame, boxes)
                times.append((time.perf_counter() - start) * 1000.0 / batch)
            print(
                f"{'+'.join(models):28s} batch {batch:2d}, {args.threads} threads: "
                f"median {np.median(times):6.2f} ms/face, p10 {np.percentile(times, 10):6.2f} ms/face"
            )


if __name__ == "__main__":
    main()
