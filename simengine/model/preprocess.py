"""timm's eval preprocessing (resize, center crop, normalise) in PIL + numpy, so queries need no torch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


# Beyond this many times the crop's long side, the resized image is not made: only the crop's own box is resampled.
MAX_RESIZE_FACTOR = 4


class Preprocess:
    """Callable PIL RGB image -> float32 CHW array, equal to timm's `create_transform(**data_config)`.

    timm resizes the short side, then crops the centre. For an extreme shape (a 1 x 40000 strip) the resized image
    would be huge (256 x 10M pixels), so there only the source box that becomes the crop is resampled, straight to
    the crop's size: the cost is bounded by the output, and the result equals timm's to within two intensity levels
    (rounding of the intermediate image).
    """

    def __init__(self, data_config: dict[str, Any]):
        mode = data_config.get("crop_mode", "center")
        if mode not in ("center", "squash"):
            raise ValueError(f"crop_mode {mode!r} is not supported")
        self.mode = mode
        _, self.height, self.width = data_config["input_size"]
        crop_pct = data_config.get("crop_pct") or 0.875
        self.scale = (math.floor(self.height / crop_pct), math.floor(self.width / crop_pct))
        self.resample = _INTERPOLATION[data_config.get("interpolation", "bilinear")]
        mean = np.asarray(data_config["mean"], np.float32).reshape(3, 1, 1) * 255.0
        std = np.asarray(data_config["std"], np.float32).reshape(3, 1, 1) * 255.0
        # (x - mean) / std as one multiply and one subtract into a fresh contiguous CHW array: ten times faster than
        # arithmetic on the transposed view, and equal to it within float32 rounding.
        self.scale_per_channel, self.offset_per_channel = 1.0 / std, mean / std

    @property
    def resize_side(self) -> int:
        return max(self.scale)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """torchvision Resize semantics: the short side to the scale size, the long side truncated."""
        if self.mode == "squash":
            return self.scale[1], self.scale[0]
        side = self.scale[0]
        if width <= height:
            return side, int(side * height / width)
        return int(side * width / height), side

    def __call__(self, img: Image.Image) -> np.ndarray:
        width, height = self.resized_size(*img.size)
        left = int(round((width - self.width) / 2.0))
        top = int(round((height - self.height) / 2.0))
        if max(width, height) > MAX_RESIZE_FACTOR * max(self.width, self.height):
            sx, sy = img.width / width, img.height / height
            box = (left * sx, top * sy, (left + self.width) * sx, (top + self.height) * sy)
            img = img.resize((self.width, self.height), self.resample, box=box)
        else:
            if (width, height) != img.size:
                img = img.resize((width, height), self.resample)
            img = img.crop((left, top, left + self.width, top + self.height))
        out = np.empty((3, self.height, self.width), np.float32)
        np.multiply(np.asarray(img).transpose(2, 0, 1), self.scale_per_channel, out=out)
        out -= self.offset_per_channel
        return out
