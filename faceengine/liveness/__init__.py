"""Passive liveness (presentation-attack detection) on full frames around the detector's boxes.

See :mod:`faceengine.liveness.scorer`; weights and their licence are in ``weights/``.
"""

from faceengine.liveness.scorer import MODEL_VERSION, LivenessScorer, LivenessWeightsError, get_scorer

__all__ = ["MODEL_VERSION", "LivenessScorer", "LivenessWeightsError", "get_scorer"]
