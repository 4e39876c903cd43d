"""Face crops for the embedders: ArcFace 5-point similarity alignment and FaceNet box crops.

Pure numpy + PIL (no OpenCV). :func:`align_arcface` reproduces ``cv2.warpAffine`` (bilinear,
black border) with the transform from :func:`umeyama` (what ``skimage``'s
``SimilarityTransform`` and insightface's ``norm_crop`` compute).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: ArcFace / insightface 5-point template for a 112x112 crop: left eye, right eye, nose tip,
#: left mouth corner, right mouth corner (left/right as seen in the image).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_SIZE = 112

#: FaceNet crop as in facenet-pytorch's LFW evaluation (``MTCNN(image_size=160, margin=14)``).
FACENET_SIZE = 160
FACENET_MARGIN = 14


def umeyama(src: np.ndarray, dst: np.ndarray, *, estimate_scale: bool = True) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991) mapping ``src`` points onto ``dst``.

    ``src`` and ``dst`` are (N, 2) arrays. Returns the 3x3 homogeneous matrix ``T`` with
    ``dst ~= (T @ [x, y, 1])[:2]``; reflections are excluded.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"expected two (N, 2) point arrays, got {src.shape} and {dst.shape}")
    n, dim = src.shape
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_d = src - src_mean
    dst_d = dst - dst_mean
    cov = dst_d.T @ src_d / n
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1)
    u, s, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        return np.full((dim + 1, dim + 1), np.nan)
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            t[:dim, :dim] = u @ vt
        else:
            s_last = d[dim - 1]
            d[dim - 1] = -1
            t[:dim, :dim] = u @ np.diag(d) @ vt
            d[dim - 1] = s_last
    else:
        t[:dim, :dim] = u @ np.diag(d) @ vt
    scale = 1.0
    if estimate_scale:
        scale = 1.0 / src_d.var(axis=0).sum() * (s @ d)
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean)
    t[:dim, :dim] *= scale
    return t


def arcface_transform(landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """2x3 matrix mapping image coordinates onto the ArcFace template scaled to ``size``."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    dst = ARCFACE_TEMPLATE_112 * (size / float(ARCFACE_SIZE))
    return umeyama(pts, dst)[:2]


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp an HxWx3 uint8 image with a 2x3 forward matrix, like ``cv2.warpAffine`` (bilinear).

    ``size`` is (width, height) of the output. Pixels mapped from outside the image are black.
    """
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)
    a, b, c = inv[0]
    d, e, f = inv[1]
    # PIL samples at pixel centres (x + 0.5); OpenCV at integer coordinates. Shift so that the
    # result matches OpenCV's convention, in which the landmarks are expressed.
    c = c + 0.5 * (a + b) - 0.5
    f = f + 0.5 * (d + e) - 0.5
    pil = Image.fromarray(np.ascontiguousarray(image))
    out = pil.transform(size, Image.Transform.AFFINE, (a, b, c, d, e, f), resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def align_arcface(image: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """Align a face to the ArcFace 5-point template: returns a (size, size, 3) uint8 RGB crop."""
    return warp_affine(image, arcface_transform(landmarks, size), (size, size))


def facenet_crop_box(
    box: np.ndarray,
    image_width: int,
    image_height: int,
    *,
    size: int = FACENET_SIZE,
    margin: float = FACENET_MARGIN,
) -> tuple[int, int, int, int]:
    """Integer crop box around a detector box, facenet-pytorch ``extract_face`` convention.

    ``margin`` is in pixels of the *output* crop: the box is grown so that, once resized to
    ``size``, ``margin`` pixels surround the detected box (split evenly on both sides).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    mx = margin * (x2 - x1) / (size - margin)
    my = margin * (y2 - y1) / (size - margin)
    return (
        int(max(x1 - mx / 2, 0)),
        int(max(y1 - my / 2, 0)),
        int(min(x2 + mx / 2, image_width)),
        int(min(y2 + my / 2, image_height)),
    )


def crop_facenet(
    image: np.ndarray,
    box: np.ndarray,
    *,
    size: int = FACENET_SIZE,
    margin: float = FACENET_MARGIN,
) -> np.ndarray:
    """Box crop with margin resized to (size, size, 3) uint8, as facenet-pytorch's MTCNN does."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = facenet_crop_box(box, w, h, size=size, margin=margin)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty face box {box!r} for an image of {w}x{h}")
    crop = Image.fromarray(np.ascontiguousarray(image)).crop((x1, y1, x2, y2))
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def to_grey(image: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB uint8 image, as float64."""
    rgb = np.asarray(image, dtype=np.float64)
    if rgb.ndim == 2:
        return rgb
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
