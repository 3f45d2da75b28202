"""Intensity augmentations that MONAI lacks, array and dictionary versions side by side."""

from __future__ import annotations

from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import RandomizableTransform

from monai_ssl_ext.transforms.shared_draw import SharedDrawd

__all__ = ["RandSpeckleNoise", "RandSpeckleNoised"]


class RandSpeckleNoise(RandomizableTransform):
    """Multiplicative speckle noise ``x * (1 + sigma * n)``, ``n ~ N(0, 1)`` per pixel, clipped to [lo, hi].

    Ultrasound images are formed by coherent summation of echoes, which gives a multiplicative,
    signal-dependent granular texture (speckle) rather than additive sensor noise (Burckhardt,
    "Speckle in ultrasound B-mode scans", IEEE Trans. Sonics Ultrason. 1978). Multiplying by
    ``1 + sigma * n`` imitates a different speckle realisation of the same anatomy, which is the
    kind of change a model should be invariant to.

    Args:
        prob: probability of applying the noise.
        sigma: range ``(min, max)`` from which the noise level is drawn.
        clip: output range, ``None`` for no clipping.
    """

    def __init__(
        self, prob: float = 0.5, sigma: tuple[float, float] = (0.05, 0.2), clip: tuple[float, float] | None = (0.0, 1.0)
    ) -> None:
        super().__init__(prob)
        self.sigma = sigma
        self.clip = clip
        self._sigma = 0.0
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._sigma = float(self.R.uniform(*self.sigma))
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        img = torch.as_tensor(img)
        gen = torch.Generator(device="cpu").manual_seed(self._seed)
        noise = torch.randn(img.shape, generator=gen, dtype=torch.float32).to(img.device, img.dtype)
        out = img * (1.0 + self._sigma * noise)
        return out.clamp(*self.clip) if self.clip is not None else out


class RandSpeckleNoised(SharedDrawd):
    """Dictionary version of :class:`RandSpeckleNoise` (one draw shared by all ``keys``)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        sigma: tuple[float, float] = (0.05, 0.2),
        clip: tuple[float, float] | None = (0.0, 1.0),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, RandSpeckleNoise(prob=1.0, sigma=sigma, clip=clip), prob, allow_missing_keys)
