"""Speed of the liveness scorer on this machine: ms per face for each PAD network and both fused.

    python bench/liveness_speed.py [--threads 2] [--repeat 200] [--batch 1 4] [--backend onnx torch]

Times ``LivenessScorer.score`` (full-frame crops + networks) on a 640x480 frame, after a warm-up,
for each backend (onnxruntime on the shipped ONNX exports, torch on the state dicts); the
backends' rounds alternate so that a shared machine's load hits them alike. Prints per face the
median and the 10th percentile of the wall time (the latter is closer to an idle machine's figure
when other processes share the CPU) and the median CPU time of the process (all its threads: the
work done, which another process's load inflates much less than the wall time).
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
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; --repeat calls split among them")
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--backend", nargs="*", default=["onnx", "torch"], choices=["onnx", "torch"])
    args = parser.parse_args()
    torch_threads_set(args.threads)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    box = np.array([260.0, 160.0, 380.0, 310.0])
    boxes = {batch: np.repeat(box[None], batch, axis=0) + rng.uniform(-40, 40, (batch, 4)) for batch in args.batch}
    cases = []
    for models in [(name,) for name in DEFAULT_MODELS] + [DEFAULT_MODELS]:
        for backend in args.backend:
            scorer = LivenessScorer(models=models, num_threads=args.threads, backend=backend)
            for batch in args.batch:
                for _ in range(10):
                    scorer.score(frame, boxes[batch])
                cases.append((models, backend, batch, scorer))
    wall: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    cpu: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    per_round = max(args.repeat // args.rounds, 1)
    for _ in range(args.rounds):
        for i, (_models, _backend, batch, scorer) in enumerate(cases):
            for _ in range(per_round):
                start, start_cpu = time.perf_counter(), time.process_time()
                scorer.score(frame, boxes[batch])
                cpu[i].append((time.process_time() - start_cpu) * 1000.0 / batch)
                wall[i].append((time.perf_counter() - start) * 1000.0 / batch)
    for i, (models, backend, batch, _scorer) in enumerate(cases):
        print(
            f"{'+'.join(models):28s} {backend:5s} batch {batch:2d}, {args.threads} threads: "
            f"median {np.median(wall[i]):6.2f} ms/face, p10 {np.percentile(wall[i], 10):6.2f} ms/face, "
            f"CPU {np.median(cpu[i]):6.2f} ms/face"
        )


if __name__ == "__main__":
    main()
