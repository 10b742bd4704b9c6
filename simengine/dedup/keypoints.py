"""Geometric verification: how many keypoint matches between two images agree on one similarity transform.

A copy that was cropped, rotated a little, resized, recompressed, recoloured or stamped with text keeps most of its
corners where one transform (scale, rotation, shift) puts them; another photo of the same scene does not. ORB
keypoints (OpenCV), Lowe's ratio test, and RANSAC on a partial affine transform: on Imagenette's training holdout,
generated copies had a median of 400-850 agreeing matches, the most similar other photo of the same class 3.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from simengine.data.decode import load_rgb

# Every image is scaled to a short side of 320 px (ORB's fixed-size patches need enough pixels to find corners) and
# a long side of at most 1280 px: pictures of any size meet at one scale, within ORB's pyramid, and a thin strip
# cannot grow to gigapixels.
SHORT_SIDE = 320
LONG_SIDE_MAX = 1280
KEYPOINTS = 1000
RATIO = 0.8
REPROJECTION_PX = 4.0


@dataclass(frozen=True)
class Keypoints:
    points: np.ndarray  # (n, 2) float32 positions
    descriptors: np.ndarray | None  # (n, 32) uint8 ORB descriptors


def keypoints(image: str | os.PathLike | Image.Image) -> Keypoints:
    """ORB keypoints of an image, or of an image file (raises ImageLoadError when it cannot be decoded)."""
    import cv2

    picture = image if isinstance(image, Image.Image) else load_rgb(image, draft_size=(SHORT_SIDE, SHORT_SIDE))
    scale = min(SHORT_SIDE / min(picture.size), LONG_SIDE_MAX / max(picture.size))
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    grey = np.asarray(picture.convert("L").resize(size, Image.Resampling.BILINEAR))
    try:
        found, descriptors = cv2.ORB_create(nfeatures=KEYPOINTS).detectAndCompute(grey, None)
    except cv2.error:  # nothing ORB can use (an image a few pixels across)
        return Keypoints(np.zeros((0, 2), np.float32), None)
    return Keypoints(np.float32([k.pt for k in found]).reshape(-1, 2), descriptors)


def agreeing_matches(a: Keypoints, b: Keypoints) -> int:
    """Matches from `a` to `b` that pass the ratio test and fit one similarity transform (RANSAC inliers)."""
    import cv2

    if a.descriptors is None or b.descriptors is None or len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 3:
        return 0
    source = a.points[[m.queryIdx for m in good]]
    target = b.points[[m.trainIdx for m in good]]
    _, inliers = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC,
                                             ransacReprojThreshold=REPROJECTION_PX)
    return 0 if inliers is None else int(inliers.sum())
