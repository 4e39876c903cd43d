"""Match thresholds (cosine similarity) per model version, and the ambiguity margin.

Resolution order of :func:`threshold_for`:

1. the door's ``match_threshold`` override, when set;
2. the stored :class:`~recognition.models.ModelCalibration` of the model version
   (``manage.py calibrate_threshold`` writes it through :func:`store_threshold`);
3. ``settings.RECOGNITION_DEFAULT_THRESHOLD`` (env ``ACCESSCTL_MATCH_THRESHOLD``), when set;
4. the built-in :data:`BUILTIN_THRESHOLDS` of the model version.

A model version with none of these has no threshold: :class:`CalibrationError` (fail closed).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction

from accessctl.process_cache import ProcessCache
from recognition.models import ModelCalibration

if TYPE_CHECKING:
    from accessctl.models import Door

logger = logging.getLogger(__name__)

#: Built-in thresholds, used until a calibration is stored (``manage.py calibrate_threshold``).
#: A door searches a whole gallery (1:N), so the threshold must bound the chance that a stranger
#: matches *anyone*, not one pair. sface on LFW (identification benchmark of
#: ``recognition.evaluation``: 423 people x 3 photos = 1,269 gallery entries, 4,716 known and
#: 7,247 unknown probes): 0.476 accepts 1 % of unknown people with 99.51 % correct identification
#: (0.548: 0.1 % / 97.92 %). The 1:1 pair threshold at FAR 1e-3 (0.3644, TAR 99.0 %) would accept
#: 63 % of strangers against that gallery. Larger galleries need a higher value: calibrate.
#: sface-2021dec-int8qdq (the int8 edge variant): 0.479 lets a stranger match a 423 x 3 gallery 1 % of
#: the time, measured with every cross-person pair (29.6 M) of the 7,701 LFW-pairs photos as impostors
#: (``bench/sface_int8.py``, YuNet crops); the same measure gives float sface 0.477 (its 0.476 above).
#: facenet-*: NOT measured here yet; a conservative value. Calibrate before using them at a door.
BUILTIN_THRESHOLDS: dict[str, float] = {
    "sface-2021dec-int8bq": 0.476,
    "sface-2021dec-int8qdq": 0.479,
    "facenet-casia-20180408": 0.50,
    "facenet-casia-20180408-fixed-flip": 0.50,
    "facenet-vggface2": 0.50,
}


#: Built-in thresholds above that were chosen, not measured: enough for a server that keeps every
#: decision, not for a device deciding alone (:func:`offline_threshold_for`).
UNMEASURED_BUILTINS = frozenset({"facenet-casia-20180408", "facenet-casia-20180408-fixed-flip", "facenet-vggface2"})


class CalibrationError(LookupError):
    """No threshold is known for a model version."""


def store_threshold(
    *,
    model_version: str,
    threshold: float,
    target_fmr: float,
    details: dict[str, Any] | None = None,
    min_margin: float | None = None,
) -> ModelCalibration:
    """Create or update the calibration of ``model_version``.

    ``min_margin=None`` keeps the stored margin (0 on creation, meaning "use the setting").
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"a cosine-similarity threshold lies in [-1, 1], got {threshold}")
    if not 0.0 < target_fmr < 1.0:
        raise ValueError(f"target_fmr must be in (0, 1), got {target_fmr}")
    if min_margin is not None and not 0.0 <= min_margin <= 2.0:
        raise ValueError(f"min_margin must be in [0, 2], got {min_margin}")
    with transaction.atomic():
        calibration, created = ModelCalibration.objects.select_for_update().get_or_create(
            model_version=model_version,
            defaults={"threshold": threshold, "target_fmr": target_fmr, "details": details or {}},
        )
        if not created:
            calibration.threshold = threshold
            calibration.target_fmr = target_fmr
            calibration.details = details or {}
        if min_margin is not None:
            calibration.min_margin = min_margin
        calibration.save()
    logger.info(
        "calibration of %s: threshold %.4f at FMR %g (margin %.3f, %s)",
        model_version,
        threshold,
        target_fmr,
        calibration.min_margin,
        "created" if created else "updated",
    )
    return calibration


def _setting_threshold() -> float | None:
    """``settings.RECOGNITION_DEFAULT_THRESHOLD``: parsed and checked when the settings load."""
    value = settings.RECOGNITION_DEFAULT_THRESHOLD
    return None if value is None else float(value)


#: Read on every door decision, changed a few times a year (see accessctl.process_cache).
CALIBRATIONS = ProcessCache("calibrations", ttl_s=10.0, cleared_by=(ModelCalibration,))


def _stored(model_version: str) -> tuple[float | None, float | None]:
    """``(threshold, min_margin)`` stored for ``model_version`` (None when not calibrated)."""

    def load() -> tuple[float | None, float | None]:
        rows = ModelCalibration.objects.filter(model_version=model_version).values_list("threshold", "min_margin")
        found = rows.first()
        return (found[0], found[1]) if found else (None, None)

    return CALIBRATIONS.get(model_version, load)


def threshold_for(model_version: str, door: Door | None = None) -> float:
    """The similarity a match of ``model_version`` must reach (at ``door``, when given)."""
    if door is not None and door.match_threshold is not None:
        return float(door.match_threshold)
    stored = _stored(model_version)[0]
    if stored is not None:
        return float(stored)
    configured = _setting_threshold()
    if configured is not None:
        return configured
    builtin = BUILTIN_THRESHOLDS.get(model_version)
    if builtin is not None:
        return builtin
    raise CalibrationError(
        f"no match threshold for model version {model_version!r}: run manage.py calibrate_threshold "
        "or set ACCESSCTL_MATCH_THRESHOLD"
    )


def threshold_measured(model_version: str, door: Door | None = None) -> bool:
    """Whether the threshold :func:`threshold_for` gives is one someone measured or chose on
    purpose (the door's override, a stored calibration, the setting, a measured built-in value).
    A model whose only threshold is an unmeasured built-in (:data:`UNMEASURED_BUILTINS`) must not
    decide at a door: the server denies its faces ``model_not_calibrated``, the offline allow-list
    is not built for it."""
    if door is not None and door.match_threshold is not None:
        return True
    if _stored(model_version)[0] is not None or _setting_threshold() is not None:
        return True
    return model_version not in UNMEASURED_BUILTINS


def offline_threshold_for(model_version: str, door: Door) -> float:
    """:func:`threshold_for` for a device that decides alone (the offline allow-list): the same
    value, except that a model whose threshold is only an unmeasured built-in value has none
    (:class:`CalibrationError`): such a model must not decide at a door without the server."""
    threshold = threshold_for(model_version, door)
    if not threshold_measured(model_version, door):
        raise CalibrationError(
            f"the threshold of {model_version!r} is not measured: run manage.py calibrate_threshold "
            "before it decides at a door offline"
        )
    return threshold


def margin_for(model_version: str) -> float:
    """Minimum similarity gap between the two best people for an unambiguous match.

    The calibrated ``min_margin`` when positive, else ``settings.RECOGNITION_MIN_MARGIN``.
    """
    stored = _stored(model_version)[1]
    if stored:
        return float(stored)
    return float(settings.RECOGNITION_MIN_MARGIN)
