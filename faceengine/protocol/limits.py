"""Protocol version and the hard limits both sides enforce (parsing and signing)."""

from __future__ import annotations

PROTOCOL_VERSION = 1

#: Hard limits, enforced when parsing (and when signing, so a device never builds what the
#: server would reject).
MAX_MESSAGE_BYTES = 256 * 1024
MAX_CROP_BYTES = 128 * 1024
MAX_EMBEDDING_DIM = 4096
MAX_QUALITY_KEYS = 32
MAX_PULSE_MS = 60_000
#: Most probes one detection carries: its main crop (or embedding) plus at most this many minus one
#: ``track_probes`` (the next best faces of the same track). Each is validated like the main one and
#: the whole signed message stays under :data:`MAX_MESSAGE_BYTES`.
MAX_TRACK_PROBES = 5
#: Probes a door sends per track by default (the agent's ``[detection] track_probes``).
DEFAULT_TRACK_PROBES = 3
#: Smallest face a detection is worth (shorter side of the detector box, in frame pixels): the
#: one rule for both sides. The agent sends nothing smaller (``[detection] min_face_px``, this by
#: default) and the server denies smaller ones as ``low_quality`` (``ACCESSCTL_MIN_FACE_PX``, this by
#: default; LFW accuracy is measured on such faces).
MIN_FACE_PX = 40
#: Default timestamp windows (seconds) for :func:`check_freshness`.
DETECTION_WINDOW_S = 30.0
COMMAND_WINDOW_S = 30.0
