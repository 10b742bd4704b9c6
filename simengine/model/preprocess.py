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


class Preprocess:
    """Callable PIL RGB image -> float32 CHW array, equal to timm's `create_transform(**data_config)`."""

    def __init__(self, data_config: dict[str, Any]):
        mode = data_config.get("crop_mode", "center")
        if mode not in ("center", "squash"):
            raise ValueError(f"crop_mode {mode!r} is not supported")
        self.mode = mode
        _, self.height, self.width = data_config["input_size"]
        crop_pct = data_config.get("crop_pct") or 0.875
        self.scale = (math.floor(self.height / crop_pct), math.floor(self.width / crop_pct))
        self.resample = _INTERPOLATION[data_config.get("interpolation", "bilinear")]
        self.mean = np.asarray(data_config["mean"], np.float32).reshape(3, 1, 1) * 255.0
        self.std = np.asarray(data_config["std"], np.float32).reshape(3, 1, 1) * 255.0

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
        size = self.resized_size(*img.size)
        if size != img.size:
            img = img.resize(size, self.resample)
        left = int(round((img.width - self.width) / 2.0))
        top = int(round((img.height - self.height) / 2.0))
        img = img.crop((left, top, left + self.width, top + self.height))
        chw = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
        return (chw - self.mean) / self.std
