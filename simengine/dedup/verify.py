"""Verifying candidate pairs with the same-picture decision: each image's layout and keypoints are computed once,
on demand, and an image that cannot be read is reported and never accepted."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Hashable

import numpy as np

from simengine.dedup.calibrate import SamePicture
from simengine.errors import ImageLoadError

KEYPOINT_CACHE = 4096  # images whose keypoints stay in memory (about 40 kB each)


class PairVerifier:
    """`verify(a, b, backbone)` for images named by any hashable key; `layout_of` and `keypoints_of` compute an
    image's descriptors from its key, and `on_error(key, error)` hears of an image that could not be read."""

    def __init__(self, decision: SamePicture, layout_of: Callable[[Hashable], np.ndarray],
                 keypoints_of: Callable[[Hashable], Any],
                 on_error: Callable[[Hashable, ImageLoadError], None] = lambda key, error: None):
        self.decision = decision
        self._layout_of, self._on_error = layout_of, on_error
        self._layouts: dict[Hashable, np.ndarray | None] = {}  # 252 bytes an image: kept for the whole run
        self._keypoints = lru_cache(maxsize=KEYPOINT_CACHE)(lambda key: self._read(keypoints_of, key))

    def verify(self, a: Hashable, b: Hashable, backbone: float) -> tuple[bool, float, int | None] | None:
        """(the decision, the layout cosine, agreeing keypoint matches or None when not needed) for two images
        whose backbone features have cosine `backbone`; None when either image cannot be read."""
        if backbone < self.decision.min_backbone:
            return False, -1.0, None
        layout_a, layout_b = self.layout(a), self.layout(b)
        if layout_a is None or layout_b is None:
            return None
        layout = float(layout_a @ layout_b)
        same, agreeing = self.decision.accepts(backbone, layout, lambda: self.matches(a, b))
        return same, layout, agreeing

    def layout(self, key: Hashable) -> np.ndarray | None:
        if key not in self._layouts:
            self._layouts[key] = self._read(self._layout_of, key)
        return self._layouts[key]

    def matches(self, a: Hashable, b: Hashable) -> int:
        """Keypoint matches of a and b that agree on one similarity transform (0 when either cannot be read)."""
        from simengine.dedup.keypoints import agreeing_matches

        found_a, found_b = self._keypoints(a), self._keypoints(b)
        return 0 if found_a is None or found_b is None else agreeing_matches(found_a, found_b)

    def _read(self, compute: Callable[[Hashable], Any], key: Hashable) -> Any:
        try:
            return compute(key)
        except ImageLoadError as exc:  # changed or removed since its features were read
            self._on_error(key, exc)
            return None
