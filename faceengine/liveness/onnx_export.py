"""Export the shipped MiniFASNet state dicts to the ONNX files the scorer runs with onnxruntime.

    python -m faceengine.liveness.onnx_export [--out DIR] [--weights-dir DIR]

Each network is built from its ``.pth`` state dict (``network.network_load``: strict load, eval
mode, batch norms folded into the convolutions), exported with torch's TorchScript-based ONNX
exporter (opset 17, a dynamic batch axis, constants folded) as ``(N, 3, 80, 80)`` BGR 0-255
float32 -> ``(N, 3)`` logits, then checked: onnxruntime's softmax must equal torch's within
:data:`TOLERANCE` on a batch of random crops. The command prints each file's SHA-256 (the values
``scorer.PAD_MODELS`` pins) and the largest difference it saw.

The shipped ``.onnx`` files were written by this module from the shipped ``.pth`` files; a
later torch may write different bytes (producer version, node names) for the same function, so
the test re-exports and compares outputs, not bytes. torch and onnxruntime are imported here at
module level: this module is a build tool, never imported by the scorer.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from faceengine.liveness.network import INPUT_SIZE, network_load
from faceengine.liveness.scorer import DEFAULT_MODELS, PAD_MODELS, WEIGHTS_DIR, LivenessWeightsError

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: largest difference allowed between onnxruntime's and torch's class probabilities
TOLERANCE = 1e-4


def onnx_probabilities(path: str | Path, batch: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, 3)`` of the ONNX network at ``path`` for ``batch`` (N, 3, 80, 80)."""
    logits = onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def check_batch(seed: int = 0, n: int = 8) -> np.ndarray:
    """Random BGR 0-255 crops ``(n, 3, 80, 80)`` float32 (whole levels, as the scorer's crops are)."""
    rng = np.random.default_rng(seed)
    return np.rint(rng.uniform(0, 255, (n, 3, INPUT_SIZE, INPUT_SIZE))).astype(np.float32)


def onnx_session(path: str | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def max_difference(name: str, onnx_path: str | Path, *, weights_dir: Path = WEIGHTS_DIR, seed: int = 0) -> float:
    """Largest absolute difference between the class probabilities of the ONNX file and of the
    torch network built from the state dict, on :func:`check_batch`."""
    spec = PAD_MODELS[name]
    network = network_load(name, weights_dir / spec.filename)
    batch = check_batch(seed)
    with torch.inference_mode():
        reference = torch.softmax(network(torch.from_numpy(batch)), dim=1).numpy()
    return float(np.abs(onnx_probabilities(onnx_path, batch) - reference).max())


def export(name: str, out_path: str | Path, *, weights_dir: Path = WEIGHTS_DIR) -> str:
    """Write network ``name`` as ONNX to ``out_path``; check it against torch; return its SHA-256."""
    spec = PAD_MODELS[name]
    source = weights_dir / spec.filename
    if not source.is_file():
        raise LivenessWeightsError(f"liveness weights not found: {source}")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != spec.sha256:
        raise LivenessWeightsError(f"liveness weights {source} have SHA-256 {digest}, expected {spec.sha256}")
    network = network_load(name, source)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: see the module's text
        torch.onnx.export(
            network,
            (torch.from_numpy(check_batch(n=1)),),
            str(out_path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    difference = max_difference(name, out_path, weights_dir=weights_dir)
    if difference > TOLERANCE:
        out_path.unlink()
        raise RuntimeError(f"{name}: ONNX and torch differ by {difference:.2e} (> {TOLERANCE})")
    return hashlib.sha256(out_path.read_bytes()).hexdigest()


def export_all(
    out_dir: str | Path, *, weights_dir: Path = WEIGHTS_DIR, models: Sequence[str] = DEFAULT_MODELS
) -> dict[str, str]:
    """Export every network of ``models`` into ``out_dir`` under its shipped ONNX name; name -> SHA-256."""
    out_dir = Path(out_dir)
    return {name: export(name, out_dir / PAD_MODELS[name].onnx_filename, weights_dir=weights_dir) for name in models}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the .onnx files (default: shipped)")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="folder holding the .pth state dicts")
    parser.add_argument("--check", action="store_true", help="export to a temporary folder, compare with the shipped")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            for name, digest in export_all(tmp, weights_dir=args.weights_dir).items():
                spec = PAD_MODELS[name]
                fresh = max_difference(name, Path(tmp) / spec.onnx_filename, weights_dir=args.weights_dir)
                shipped = max_difference(name, WEIGHTS_DIR / spec.onnx_filename, weights_dir=args.weights_dir)
                same = "same bytes" if digest == spec.onnx_sha256 else "other bytes"
                print(
                    f"{name}: fresh export {digest}, shipped {spec.onnx_sha256} ({same}); "
                    f"max |p_onnx - p_torch| fresh {fresh:.1e}, shipped {shipped:.1e}"
                )
        return
    for name, digest in export_all(args.out, weights_dir=args.weights_dir).items():
        path = args.out / PAD_MODELS[name].onnx_filename
        difference = max_difference(name, path, weights_dir=args.weights_dir)
        print(f"{name}: {path} sha256 {digest}, max |p_onnx - p_torch| {difference:.1e}")


if __name__ == "__main__":
    main()
