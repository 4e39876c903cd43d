"""The Django-free face engine and wire protocol shared by the server and the edge agent.

Detection (:mod:`~faceengine.detector`), alignment, quality, embedders (:mod:`~faceengine.embedder`
the interface, :mod:`~faceengine.registry` the backends by name), passive liveness
(:mod:`faceengine.liveness`, MiniFASNet, Apache-2.0 weights) and the device protocol
(:mod:`faceengine.protocol`). Imports nothing of the server apps or the agent, never Django, and
reads no environment or settings: callers pass options to constructors.
"""

__version__ = "0.1.0"
