"""Would an int8 YuNet help the edge agent? YuNet float (the shipped file as ``faceengine.yunet``
runs it: weights dequantised at load) against the same network statically quantised here (QDQ,
int8 weights per channel, uint8 activations calibrated on LFW photos): faces found on LFW at the
agent's ``min_detector_score`` and ms per 640x480 frame on N threads.

The quantised file is written to a temporary folder and thrown away: this only measures.
Run: ``.venv/bin/python bench/yunet_int8.py [--images 500] [--calibration 50] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faces import LFW_DIR  # noqa: E402


def frame_640x480(rgb: np.ndarray) -> np.ndarray:
    """An LFW photo (250x250) pasted into a dark 640x480 frame, as a door camera would see a face."""
    canvas = np.full((480, 640, 3), 40, dtype=np.uint8)
    h, w = rgb.shape[:2]
    canvas[115 : 115 + h, 195 : 195 + w] = rgb
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--calibration", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-score", type=float, default=0.9, help="the agent's [detection] min_detector_score")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from faceengine import yunet
    from faceengine.quantization import evenly_spaced, image_files
    from recognition.embedding_cache import load_rgb

    files = image_files(LFW_DIR)
    calib = evenly_spaced(files, args.calibration)
    test = evenly_spaced(files[1:], args.images)
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / "float.onnx"
        fixed.write_bytes(yunet.load_fixed_model(yunet.default_model_path()))
        name = onnx.load(str(fixed)).graph.input[0].name
        feeds = [{name: yunet.to_blob(frame_640x480(load_rgb(LFW_DIR / rel)))[0]} for rel in calib]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(feeds)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._it, None)

        int8 = Path(tmp) / "int8.onnx"
        quantize_static(
            str(fixed), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = {
            "float": ort.InferenceSession(str(fixed), options, providers=["CPUExecutionProvider"]),
            "int8": ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"]),
        }
        report: dict[str, object] = {"images": len(test), "min_score": args.min_score, "threads": args.threads}
        found: dict[str, list[float]] = {k: [] for k in sessions}
        for rel in test:
            blob, _ = yunet.to_blob(frame_640x480(load_rgb(LFW_DIR / rel)))
            for key, session in sessions.items():
                names = [o.name for o in session.get_outputs()]
                outputs = dict(zip(names, session.run(names, {name: blob}), strict=True))
                _, scores, _ = yunet.decode(outputs, blob.shape[2:], score_threshold=0.3)
                found[key].append(float(scores.max()) if scores.size else 0.0)
        blob, _ = yunet.to_blob(frame_640x480(load_rgb(LFW_DIR / test[0])))
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for key, session in sessions.items():
                start = time.process_time()
                session.run(None, {name: blob})
                times[key].append((time.process_time() - start) * 1000)
        for key in sessions:
            best = np.array(found[key])
            report[key] = {
                "detection_rate": round(float(np.mean(best >= args.min_score)) * 100, 2),
                "median_best_score": round(float(np.median(best)), 4),
                "cpu_ms_per_frame_min": round(min(times[key]), 2),
                "cpu_ms_per_frame_median": round(float(np.median(times[key])), 2),
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
