"""Liveness at the edge: score every frame's faces in one batch, fuse a track's frame scores.

The agent scores the full frame around each detector box (``faceengine.liveness``: the networks
need the face's surroundings, the printed sheet's edge and the hand are the evidence), keeps one
score per frame on the track, and sends the fused score with the number of frames it scored in the
signed detection. A scorer that fails never stops the agent: the frame counts as not scored, and a
track with no scored frame is sent without liveness (the server treats it as "not measured").

The networks' threshold was calibrated on windows around MTCNN's boxes; with another detector
(YuNet) the window is cut around the detector's box redrawn in MTCNN's convention by MTCNN's
R-Net and O-Net (``faceengine.onet_refine``, ``[liveness] boxes = "onet"``, what ``auto`` gives
YuNet): the tracker, the aligned crop and the landmarks keep the detector's own box.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from faceengine.liveness import MODEL_VERSION
from faceengine.liveness.fusion import FUSIONS, fuse
from faceengine.protocol import Detection

logger = logging.getLogger(__name__)

#: log a failing scorer on its first failure, then once per this many failures
_LOG_EVERY = 100


class FrameScorer(Protocol):
    """``faceengine.liveness.LivenessScorer``'s interface: live probability per box of one frame."""

    def score(self, frame_rgb: np.ndarray, boxes: Any) -> np.ndarray: ...


#: ``(frame_rgb, boxes (N, 4)) -> boxes (N, 4)``: the boxes the liveness windows are cut around
BoxRedraw = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: ``[liveness] boxes`` values once ``auto`` is resolved
BOX_SOURCES = ("detector", "onet")


@dataclass(frozen=True)
class LivenessEvidence:
    """What a detection says about liveness: fused live score (0..1), frames scored, model label."""

    score: float
    frames: int
    model: str

    def detection_fields(self) -> dict[str, Any]:
        return {"liveness": self.score, "liveness_frames": self.frames, "liveness_model": self.model}


class EdgeLiveness:
    """The agent's liveness: ``scorer`` over each frame's boxes, a track's frame scores fused by ``fusion``.

    ``fusion``: ``top_k`` (the mean of the best ``fuse_top_k`` frames) or ``median`` (the median
    of all the track's frames, :func:`fuse_median`). ``redraw``: when given, each frame's boxes go
    through it before scoring (YuNet's boxes redrawn by MTCNN's R-Net and O-Net); a redraw that
    fails counts as a scorer failure.
    """

    def __init__(
        self,
        scorer: FrameScorer,
        *,
        fuse_top_k: int = 3,
        model: str = MODEL_VERSION,
        redraw: BoxRedraw | None = None,
        fusion: str = "top_k",
    ) -> None:
        if fuse_top_k < 1:
            raise ValueError("fuse_top_k must be >= 1")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown liveness fusion {fusion!r} (expected one of {FUSIONS})")
        self.fusion = fusion
        self.scorer = scorer
        self.redraw = redraw
        self.fuse_top_k = fuse_top_k
        self.model = model
        self.failures = 0

    def score_frame(self, frame_rgb: np.ndarray, boxes: Sequence[Sequence[float]]) -> list[float | None]:
        """Live score of each box of one frame (one batch); all None when the scorer fails."""
        if not boxes:
            return []
        try:
            box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            if self.redraw is not None:
                box_arr = np.asarray(self.redraw(frame_rgb, box_arr), dtype=np.float64)
                if box_arr.shape != (len(boxes), 4) or not np.all(np.isfinite(box_arr)):
                    raise ValueError(f"box redraw returned {box_arr.shape} boxes for {len(boxes)}")
            scores = np.asarray(self.scorer.score(frame_rgb, box_arr), dtype=np.float64)
            if scores.shape != (len(boxes),) or not np.all(np.isfinite(scores)):
                raise ValueError(f"scorer returned {scores.shape} scores for {len(boxes)} boxes")
        except Exception:
            self.failures += 1
            if self.failures % _LOG_EVERY == 1:
                logger.exception(
                    "liveness scorer failed (%d time(s) so far): detections go without a live score", self.failures
                )
            return [None] * len(boxes)
        return [float(min(1.0, max(0.0, s))) for s in scores]

    def fuse(self, scores: Sequence[float]) -> LivenessEvidence | None:
        """The track's evidence from its frame scores; None when no frame was scored."""
        fused = fuse(scores, self.fusion, k=self.fuse_top_k)
        if fused is None:
            return None
        # a very long track (a large max_dwell_s) must not exceed what the protocol accepts
        frames = min(len(scores), Detection.MAX_LIVENESS_FRAMES)
        return LivenessEvidence(score=round(fused, 6), frames=frames, model=self.model)


def liveness_load(
    *,
    enabled: bool,
    threads: int,
    fuse_top_k: int,
    boxes: str = "detector",
    fusion: str = "top_k",
    backend: str = "auto",
) -> EdgeLiveness | None:
    """The configured liveness (``[liveness]``), or None when disabled or the weights do not load
    (logged: the agent then sends detections without a score). ``boxes``: ``detector`` (score
    around the detector's boxes) or ``onet`` (around MTCNN's R-Net and O-Net's redrawing of them).
    ``backend``: the scorer's (``faceengine.liveness.scorer.BACKENDS``; ``auto``: onnxruntime, which
    the agent installs for YuNet; ``bench/edge_fps.py`` compares it with torch)."""
    if boxes not in BOX_SOURCES:
        raise ValueError(f"unknown liveness boxes {boxes!r} (expected one of {BOX_SOURCES})")
    if fusion not in FUSIONS:
        raise ValueError(f"unknown liveness fusion {fusion!r} (expected one of {FUSIONS})")
    if not enabled:
        logger.info("liveness disabled ([liveness] enabled = false): detections carry no live score")
        return None
    try:
        from faceengine.liveness import get_scorer

        scorer = get_scorer(num_threads=threads, backend=backend)
        redraw: BoxRedraw | None = None
        if boxes == "onet":
            from faceengine.onet_refine import OnetBoxRefiner, get_onet, get_rnet

            get_rnet(), get_onet()  # at start: weights that do not load fail here, not on the first face
            redraw = OnetBoxRefiner()
    except Exception:
        logger.exception("liveness networks did not load: detections carry no live score")
        return None
    logger.info(
        "liveness on: windows cut around %s boxes", "MTCNN R-Net/O-Net's" if redraw is not None else "the detector's"
    )
    return EdgeLiveness(scorer, fuse_top_k=fuse_top_k, model=MODEL_VERSION, redraw=redraw, fusion=fusion)
