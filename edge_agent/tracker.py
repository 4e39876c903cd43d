"""IoU tracker: one detection per person, carrying the best crop seen while the track lived.

Each frame's faces are matched to live tracks by box overlap (greedy, highest IoU first). A track
keeps its best-ranked observation and is emitted exactly once: after ``max_dwell_s`` (so the door
does not wait for the person to leave the view) or when it ends (unseen for ``timeout_s``),
whichever comes first. Never one detection per frame.

With ``keep_best`` > 1 a track also keeps its next best observations (by rank, up to
``keep_best`` in all): the emission carries them as ``others`` so that the server can decide on
the track, not one frame (the detection's ``track_probes``).

Besides the best observation, a track can keep one number per observation (``evidence``, e.g. the
liveness score of each frame), so that the emission carries what every frame of the track said.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
Box = tuple[float, float, float, float]


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track(Generic[T]):
    track_id: int
    box: Box
    first_seen: float
    last_seen: float
    best: T
    best_rank: float
    best_ts: float
    frames: int = 1
    emitted: bool = False
    #: one value per observation up to the emission (see ``IouTracker(evidence=...)``)
    evidence: list[float] = field(default_factory=list)
    #: the next best observations after ``best`` as (rank, item), best first (``keep_best`` - 1 at most)
    runners_up: list[tuple[float, T]] = field(default_factory=list)

    @property
    def dwell_s(self) -> float:
        return self.last_seen - self.first_seen


@dataclass(frozen=True)
class Emission(Generic[T]):
    """A track's best observation, ready to become one Detection."""

    track_id: int
    item: T
    rank: float
    captured_at: float
    frames: int
    dwell_s: float
    reason: str  # "dwell" (still in view) or "ended"
    #: the evidence of every observation of the track until it was emitted, in frame order
    evidence: tuple[float, ...] = ()
    #: the track's next best observations after ``item``, best first (``IouTracker(keep_best=...)``)
    others: tuple[T, ...] = ()


class IouTracker(Generic[T]):
    """``evidence``: reads one value from each observation's item to keep for the whole track
    (``None`` from it: nothing kept for that observation)."""

    def __init__(
        self,
        *,
        iou_threshold: float = 0.3,
        max_dwell_s: float = 1.0,
        timeout_s: float = 0.5,
        evidence: Callable[[T], float | None] | None = None,
        keep_best: int = 1,
    ) -> None:
        if keep_best < 1:
            raise ValueError("keep_best must be at least 1")
        self.keep_best = keep_best
        self.iou_threshold = iou_threshold
        self.max_dwell_s = max_dwell_s
        self.timeout_s = timeout_s
        self.evidence = evidence
        self.tracks: list[Track[T]] = []
        self._ids = itertools.count(1)

    def update(self, observations: Sequence[tuple[Box, float, T]], ts: float) -> list[Emission[T]]:
        """Feed one frame's ``(box, rank, item)`` observations taken at ``ts``; returns emissions."""
        pairs = sorted(
            (
                (iou(track.box, obs[0]), ti, oi)
                for ti, track in enumerate(self.tracks)
                for oi, obs in enumerate(observations)
            ),
            reverse=True,
        )
        used_tracks: set[int] = set()
        used_obs: set[int] = set()
        for overlap, ti, oi in pairs:
            if overlap < self.iou_threshold:
                break
            if ti in used_tracks or oi in used_obs:
                continue
            used_tracks.add(ti)
            used_obs.add(oi)
            self._extend(self.tracks[ti], observations[oi], ts)
        for oi, (box, rank, item) in enumerate(observations):
            if oi not in used_obs:
                track = Track(next(self._ids), box, ts, ts, item, rank, ts)
                self._keep_evidence(track, item)
                self.tracks.append(track)
        out: list[Emission[T]] = []
        alive: list[Track[T]] = []
        for track in self.tracks:
            ended = ts - track.last_seen > self.timeout_s
            if not track.emitted and (ended or track.dwell_s >= self.max_dwell_s):
                out.append(self._emit(track, "ended" if ended else "dwell"))
            if not ended:
                alive.append(track)
        self.tracks = alive
        return out

    def flush(self) -> list[Emission[T]]:
        """End every track (camera closed); returns the emissions still owed."""
        out = [self._emit(t, "ended") for t in self.tracks if not t.emitted]
        self.tracks = []
        return out

    def _keep_evidence(self, track: Track[T], item: T) -> None:
        if self.evidence is not None and not track.emitted:
            value = self.evidence(item)
            if value is not None:
                track.evidence.append(float(value))

    def _extend(self, track: Track[T], obs: tuple[Box, float, T], ts: float) -> None:
        box, rank, item = obs
        track.box = box
        track.last_seen = ts
        track.frames += 1
        self._keep_evidence(track, item)
        if track.emitted:
            return
        if rank > track.best_rank:
            self._runner_up(track, track.best_rank, track.best)
            track.best, track.best_rank, track.best_ts = item, rank, ts
        else:
            self._runner_up(track, rank, item)

    def _runner_up(self, track: Track[T], rank: float, item: T) -> None:
        if self.keep_best < 2:
            return
        track.runners_up.append((rank, item))
        track.runners_up.sort(key=lambda pair: -pair[0])
        del track.runners_up[self.keep_best - 1 :]

    @staticmethod
    def _emit(track: Track[T], reason: str) -> Emission[T]:
        track.emitted = True
        return Emission(
            track_id=track.track_id,
            item=track.best,
            rank=track.best_rank,
            captured_at=track.best_ts,
            frames=track.frames,
            dwell_s=track.dwell_s,
            reason=reason,
            evidence=tuple(track.evidence),
            others=tuple(item for _, item in track.runners_up),
        )
