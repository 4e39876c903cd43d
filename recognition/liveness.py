"""The server's own live score of a received crop (crop mode): recorded, informational.

The decision judges the device's score (``Detection.liveness``), not this one. The device scores
every frame of the track on the full camera frame, with the window around the face that the
networks were trained on (the printed sheet's edge, the hand, a screen's bezel are the evidence),
and fuses the frames; what reaches the server is one aligned face crop with almost none of that
surroundings, and in embedding mode no image at all. Scored here, the crop is the whole frame and
the "box" is the centred square the wider network's window just fills (both networks then see the
whole crop): a weaker, single-frame measurement, kept on the event (``liveness_server``) to
compare with the device's and to notice a device whose scores disagree, never to open or shut the
door. Only crops from doors that require liveness are scored (elsewhere nothing changes, not even
the time a decision takes); ``ACCESSCTL_LIVENESS_SERVER_SCORE=0`` turns it off everywhere.
"""

from __future__ import annotations

import io
import logging
import sys

import numpy as np
from PIL import Image

from faceengine.liveness.scorer import LivenessScorer, get_scorer

logger = logging.getLogger(__name__)

#: The largest crop scale of the shipped networks (MiniFASNetV2 2.7, MiniFASNetV1SE 4.0): a box
#: this many times smaller than the crop makes the narrower network's window the whole crop; the
#: wider one is clamped to the frame, so both see the whole crop.
_BOX_FRACTION = 1 / 2.7


#: One thread: two 80x80 networks gain little from more, and (with the torch backend) more OpenMP
#: threads keep spinning after each run, taking the cores the rest of the decision (the embedder,
#: the database, the bridge) needs: measured with bench/decision_latency.py, crop-mode p50 rose by
#: ~150 ms with two torch threads on two busy cores, and by no measurable amount with one. The
#: default backend is onnxruntime (its threads do not spin), the figure was measured with torch.
_THREADS = 1


def active_liveness_scorer() -> LivenessScorer:
    """The liveness scorer of this process (loaded on first use, once)."""
    return get_scorer(num_threads=_THREADS)


def crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The box, inside a ``width`` x ``height`` face crop, that the crop is scored around."""
    side_w, side_h = width * _BOX_FRACTION, height * _BOX_FRACTION
    x1, y1 = (width - side_w) / 2, (height - side_h) / 2
    return x1, y1, x1 + side_w, y1 + side_h


def crop_liveness_score(jpeg: bytes, *, detection_id: str = "") -> float | None:
    """The live score (0..1) of a face crop, or None when it cannot be scored (logged): it is
    informational and never stops a decision."""
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        height, width = rgb.shape[:2]
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else None
        try:
            score = active_liveness_scorer().score(rgb, np.asarray([crop_box(width, height)], dtype=np.float32))
        finally:
            if threads is not None and threads != _THREADS:
                torch.set_num_threads(threads)  # a torch embedder in this process keeps its threads
        return float(score[0])
    except Exception:
        logger.exception("detection %s: the server could not score the crop for liveness", detection_id)
        return None
