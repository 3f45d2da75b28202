"""The dictionary form of a random array transform whose one draw is applied to every key."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["SharedDrawd"]


class SharedDrawd(RandomizableTransform, MapTransform):
    """Apply ``transform`` with probability ``prob`` to every key of a dict, with **one** random draw.

    Keys that hold views of one image (an image and its copy, several modalities of one scan) must see
    the same noise level, jitter or stain change, or they would stop being views of one image. The
    wrapped array transform must offer ``randomize()`` and ``__call__(img, randomize=False)``, as MONAI's
    random array transforms do; its own ``prob`` should be 1 (this class decides whether to apply it).

    Args:
        keys: keys of the items to transform.
        transform: the random array transform.
        prob: probability of applying it (one decision for all keys).
        allow_missing_keys: do not fail on keys that are absent.
    """

    def __init__(
        self, keys: KeysCollection, transform: RandomizableTransform, prob: float, allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state: Any = None) -> SharedDrawd:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.transform.randomize()
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], randomize=False)
        return d
