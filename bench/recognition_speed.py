"""Speed of the recognition numeric core on this machine (CPU unless --device).

    python bench/recognition_speed.py [--threads N] [--backends sface facenet-casia] [--repeat 20]

Prints ms per MTCNN detection on a 640x480 frame with one face, and ms per embedding at
batch 1 and batch 16 for each available backend.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faceengine.detector import detect_faces, set_torch_threads
from faceengine.embedder import INPUT_SIZES, EmbedderError
from faceengine.registry import get_embedder
from tests.faces import LFW_DIR

LFW_SAMPLE = LFW_DIR / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"


def frame_640x480() -> np.ndarray:
    """A 640x480 RGB frame with one real face pasted in (LFW if present, else skimage)."""
    from PIL import Image

    if LFW_SAMPLE.is_file():
        face = Image.open(LFW_SAMPLE).convert("RGB").resize((220, 220))
    else:
        from skimage import data

        face = Image.fromarray(data.astronaut()).crop((120, 0, 340, 220))
    rng = np.random.default_rng(0)
    canvas = Image.fromarray(rng.integers(60, 90, (480, 640, 3), dtype=np.uint8))
    canvas.paste(face, (210, 130))
    return np.asarray(canvas)


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0: default)")
    parser.add_argument("--backends", nargs="*", default=["sface", "facenet-casia", "facenet-vggface2"])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--vggface2-weights", default=None)
    args = parser.parse_args()

    import torch

    set_torch_threads(args.threads or None)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    frame = frame_640x480()
    n = len(detect_faces(frame))
    ms = timed(lambda: detect_faces(frame), args.repeat)
    print(f"detection (MTCNN, 640x480, {n} face): {ms:.1f} ms")
    for name in args.backends:
        opts = {"num_threads": args.threads} if args.threads else {}
        if name == "facenet-vggface2":
            opts["weights_path"] = args.vggface2_weights
        if name == "facenet-casia":
            opts["cache_dir"] = Path(__file__).resolve().parents[1] / "var" / "models"
        try:
            emb = get_embedder(name, **opts)
        except (EmbedderError, FileNotFoundError, ImportError) as exc:
            print(f"{name}: skipped ({exc})")
            continue
        size = INPUT_SIZES[emb.input_kind]
        crops = np.random.default_rng(1).integers(0, 256, (16, size, size, 3), dtype=np.uint8)
        one = timed(lambda e=emb, c=crops: e.embed(c[:1]), args.repeat)
        sixteen = timed(lambda e=emb, c=crops: e.embed(c, batch_size=16), max(args.repeat // 4, 3))
        print(
            f"{emb.model_version} ({emb.dim}-d, {emb.input_kind}): batch 1 {one:.1f} ms/face, "
            f"batch 16 {sixteen / 16:.1f} ms/face ({sixteen:.0f} ms/batch)"
        )


if __name__ == "__main__":
    main()
