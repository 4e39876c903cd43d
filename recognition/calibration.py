"""Match thresholds (cosine similarity) per model version, and the ambiguity margin.

Resolution order of :func:`threshold_for`:

1. the door's ``match_threshold`` override, when set (used as it is: the door's owner chose it);
2. the stored :class:`~recognition.models.ModelCalibration` of the model version
   (``manage.py calibrate_threshold`` writes it through :func:`store_threshold`);
3. ``settings.RECOGNITION_DEFAULT_THRESHOLD`` (env ``ACCESSCTL_MATCH_THRESHOLD``), when set;
4. the built-in :data:`BUILTIN_THRESHOLDS` of the model version.

A model version with none of these has no threshold: :class:`CalibrationError` (fail closed).

Two refinements apply to a stored calibration (2.):

* **Gallery size.** Open-set false accepts grow with the number of people a stranger is compared
  with. When the calibration holds thresholds per gallery size (``details["by_gallery_size"]``,
  ``calibrate_threshold --gallery-sizes``), the threshold is the one for the live gallery's size
  (people holding a vector of the model version, :func:`recognition.gallery.gallery_people_count`,
  counted at most every :data:`GALLERY_SIZE_TTL_S` per process), interpolated in log(size) between
  the calibrated sizes (:func:`size_interpolated_threshold`), never below the stored base threshold.
* **Fused probes.** A track of K probes fused into one match (``recognition.track_fusion``) has a
  different impostor score distribution than one face. ``details["fused_offsets"][rule][K]``
  (``evaluate_door --store-fused-offsets``, :func:`store_fused_offsets`) is added to the threshold
  when ``probes_fused > 1`` (the largest calibrated K not above ``probes_fused``; none: no offset).

Fused offsets apply to every threshold but a door's override: the stored ones of the rule first,
else the built-in measured ones (:data:`BUILTIN_FUSED_OFFSETS`, for the person score they were
measured with), else none; a negative offset counts as none (never laxer than one face).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction

from accessctl.process_cache import ProcessCache
from recognition.gallery import gallery_people_count, person_score_rule
from recognition.models import FaceEmbedding, ModelCalibration

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
#: sface-2021dec-int8bq-flip (averaged with the mirrored crop): 0.477. With every cross-person pair (29.6 M)
#: of the 7,701 LFW-pairs photos (MTCNN crops) as impostors, the threshold letting a stranger match a
#: 423 x 3 gallery 1 % of the time is 0.4838 flipped against 0.4828 plain: +0.001 on sface's 0.476.
#: facenet-*: NOT measured here yet; a conservative value. Calibrate before using them at a door.
BUILTIN_THRESHOLDS: dict[str, float] = {
    "sface-2021dec-int8bq": 0.476,
    "sface-2021dec-int8bq-flip": 0.477,
    "sface-2021dec-int8qdq": 0.479,
    "facenet-casia-20180408": 0.50,
    "facenet-casia-20180408-fixed-flip": 0.50,
    "facenet-vggface2": 0.50,
}


#: Built-in fused-probe offsets (``{(model version, person score): {rule: {K: offset}}}``, the form
#: of ``details["fused_offsets"]``), used where the stored calibration holds none for the rule.
#: sface on celeba-dev (in-the-wild), 90 enrolled per split through the real enrolment and 30
#: strangers, every (attempt, other enrolled person) pair; best photo: ``evaluate_door
#: --probes-per-attempt 1,3 --fusion all --person-score best_photo --seed 0,1``; mean template: the same
#: with ``--seed 0,1,2,3``. Averaged embeddings and the max of scores sit nearer everyone (up); means of
#: scores are narrower than one score (measured -0.044 / -0.034 best photo, -0.053 / -0.046 mean
#: template: not used, see :func:`_fused_offset`).
BUILTIN_FUSED_OFFSETS: dict[tuple[str, str], dict[str, dict[int, float]]] = {
    ("sface-2021dec-int8bq", "best_photo"): {
        "mean_embedding": {3: 0.0139},
        "quality_embedding": {3: 0.0145},
        "max_score": {3: 0.0199},
    },
    # sface averaged with the mirrored crop, the server's rule only (evaluate_door --model-version
    # sface-2021dec-int8bq-flip --probes-per-attempt 1,3 --seed 0,1, the same splits).
    ("sface-2021dec-int8bq-flip", "best_photo"): {"quality_embedding": {3: 0.0159}},
    ("sface-2021dec-int8bq", "mean_template"): {
        "mean_embedding": {3: 0.0406},
        "quality_embedding": {3: 0.0219},
        "max_score": {3: 0.0128},
    },
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
    details = dict(details or {})
    with transaction.atomic():
        calibration, created = ModelCalibration.objects.select_for_update().get_or_create(
            model_version=model_version,
            defaults={"threshold": threshold, "target_fmr": target_fmr, "details": details or {}},
        )
        if not created:
            calibration.threshold = threshold
            calibration.target_fmr = target_fmr
            # offsets are relative to whatever the base threshold is: a new base keeps them
            if FUSED_OFFSETS_KEY in (calibration.details or {}) and FUSED_OFFSETS_KEY not in details:
                details[FUSED_OFFSETS_KEY] = calibration.details[FUSED_OFFSETS_KEY]
            calibration.details = details
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


#: The live gallery's size is counted at most this often per process (and again after a gallery
#: vector is saved or deleted in this process).
GALLERY_SIZE_TTL_S = 60.0
GALLERY_SIZES = ProcessCache("gallery-sizes", ttl_s=GALLERY_SIZE_TTL_S, cleared_by=(FaceEmbedding,))
#: Where :func:`store_fused_offsets` keeps the fused-probe offsets in ``ModelCalibration.details``.
FUSED_OFFSETS_KEY = "fused_offsets"
#: A fused-probe offset further from 0 than this is refused (a measurement gone wrong).
MAX_FUSED_OFFSET = 0.25


def _stored_row(model_version: str) -> tuple[float | None, float | None, dict[str, Any]]:
    def load() -> tuple[float | None, float | None, dict[str, Any]]:
        rows = ModelCalibration.objects.filter(model_version=model_version).values_list(
            "threshold", "min_margin", "details"
        )
        found = rows.first()
        return (found[0], found[1], found[2] or {}) if found else (None, None, {})

    return CALIBRATIONS.get(model_version, load)


def _stored(model_version: str) -> tuple[float | None, float | None]:
    """``(threshold, min_margin)`` stored for ``model_version`` (None when not calibrated)."""
    threshold, min_margin, _details = _stored_row(model_version)
    return threshold, min_margin


def calibration_stored(model_version: str) -> bool:
    """Whether ``manage.py calibrate_threshold`` stored a threshold for ``model_version`` (it then
    wins over ``ACCESSCTL_MATCH_THRESHOLD`` and the built-in value)."""
    return _stored(model_version)[0] is not None


def _mapping(value: Any) -> Mapping[Any, Any]:
    return value if isinstance(value, Mapping) else {}


def _numbers(entries: Mapping[Any, Any]) -> dict[int, float]:
    """``{int key: finite float value}`` of a stored JSON mapping; an entry that is neither (a
    hand-edited or damaged calibration) is left out with a warning, never a failed decision."""
    out: dict[int, float] = {}
    for key, value in entries.items():
        if value is None:
            continue
        try:
            number = float(value)
            out[int(key)] = number
        except (TypeError, ValueError):
            logger.warning("calibration entry %r: %r is not a number; ignored", key, value)
            continue
        if not math.isfinite(number):
            del out[int(key)]
            logger.warning("calibration entry %r: %r is not finite; ignored", key, value)
    return out


def size_interpolated_threshold(by_size: Mapping[Any, float | None], people: int, *, floor: float) -> float:
    """The threshold for a gallery of ``people`` from thresholds calibrated per gallery size
    (``{size: threshold or None}``; None: the calibration could not resolve that size).

    Linear in log(size) between the calibrated sizes; below the smallest, the smallest's value (no
    extrapolation towards laxer values); above the largest resolved size, extrapolated along the
    last two resolved sizes (one resolved size: its value). Never below ``floor`` (the base
    measured threshold), never above 1.
    """
    points = sorted((size, value) for size, value in _numbers(by_size).items() if size >= 1 and -1 <= value <= 1)
    if not points:
        return floor
    x = math.log(max(int(people), 1))
    xs = [math.log(size) for size, _ in points]
    ys = [value for _, value in points]
    if len(points) == 1 or x <= xs[0]:
        value = ys[0]
    elif x >= xs[-1]:
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        value = ys[-1] + max(slope, 0.0) * (x - xs[-1])
    else:
        i = next(n for n in range(1, len(xs)) if x <= xs[n])
        value = ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return min(max(value, floor), 1.0)


def fused_offset_for(offsets: Mapping[str, Mapping[Any, float]], rule: str | None, probes_fused: int) -> float:
    """The offset for ``probes_fused`` probes fused by ``rule``: the entry of the largest calibrated
    K not above ``probes_fused`` (K >= 2); 0 for one probe, an unknown rule or no such K."""
    if probes_fused <= 1 or rule is None:
        return 0.0
    found = offsets.get(str(rule))
    by_k = {k: v for k, v in _numbers(found if isinstance(found, Mapping) else {}).items() if 2 <= k <= probes_fused}
    return by_k[max(by_k)] if by_k else 0.0


def live_gallery_size(model_version: str) -> int:
    """People in the gallery of ``model_version`` (cached per process, :data:`GALLERY_SIZE_TTL_S`)."""
    return GALLERY_SIZES.get(model_version, lambda: gallery_people_count(model_version))


def _fused_offset(model_version: str, details: Mapping[str, Any], fusion: str | None, probes_fused: int) -> float:
    """The stored offset of ``fusion`` when the calibration holds one, else the built-in one measured
    with the site's person score (module docstring); never below 0: a track is not let in on weaker
    evidence than one face needs (a mean of scores measures a narrower impostor tail, but what no
    single face of the track reached stays out)."""
    stored = _mapping(details.get(FUSED_OFFSETS_KEY))
    if fusion is not None and str(fusion) in stored:
        return max(fused_offset_for(stored, fusion, probes_fused), 0.0)
    builtin = BUILTIN_FUSED_OFFSETS.get((model_version, str(person_score_rule())), {})
    return max(fused_offset_for(builtin, fusion, probes_fused), 0.0)


def threshold_for(
    model_version: str, door: Door | None = None, *, probes_fused: int = 1, fusion: str | None = None
) -> float:
    """The similarity a match of ``model_version`` must reach (at ``door``, when given), for a
    match of ``probes_fused`` probes fused by ``fusion`` (module docstring)."""
    if door is not None and door.match_threshold is not None:
        return float(door.match_threshold)
    stored, _margin, details = _stored_row(model_version)
    threshold: float | None = _setting_threshold()
    if stored is not None:
        threshold = float(stored)
        by_size = _mapping(_mapping(details.get("by_gallery_size")).get("thresholds"))
        if by_size:
            threshold = size_interpolated_threshold(by_size, live_gallery_size(model_version), floor=threshold)
    elif threshold is None:
        threshold = BUILTIN_THRESHOLDS.get(model_version)
    if threshold is not None:
        offset = _fused_offset(model_version, details, fusion, probes_fused)
        return min(max(threshold + offset, -1.0), 1.0)
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
    if calibration_stored(model_version) or _setting_threshold() is not None:
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


def store_fused_offsets(*, model_version: str, rule: str, offsets: Mapping[int, float], source: dict[str, Any]) -> None:
    """Keep the fused-probe threshold offsets of ``rule`` (``{K: offset}``, K >= 2) in the stored
    calibration of ``model_version`` (one must exist: the offsets are relative to it)."""
    clean: dict[str, float] = {}
    for k, value in offsets.items():
        if int(k) < 2 or not math.isfinite(float(value)) or abs(float(value)) > MAX_FUSED_OFFSET:
            raise ValueError(f"a fused offset needs K >= 2 and |offset| <= {MAX_FUSED_OFFSET}, got K={k}: {value}")
        clean[str(int(k))] = round(float(value), 6)
    with transaction.atomic():
        calibration = ModelCalibration.objects.select_for_update().filter(model_version=model_version).first()
        if calibration is None:
            raise CalibrationError(
                f"no stored calibration of {model_version!r} to add fused offsets to: run manage.py calibrate_threshold"
            )
        details = dict(calibration.details or {})
        fused = dict(details.get(FUSED_OFFSETS_KEY) or {})
        fused[str(rule)] = {**(fused.get(str(rule)) or {}), **clean}
        details[FUSED_OFFSETS_KEY] = fused
        sources = dict(details.get(f"{FUSED_OFFSETS_KEY}_source") or {})
        sources[str(rule)] = source
        details[f"{FUSED_OFFSETS_KEY}_source"] = sources
        calibration.details = details
        calibration.save()
    logger.info("fused offsets of %s, rule %s: %s", model_version, rule, clean)
