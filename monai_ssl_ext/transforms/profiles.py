"""Modality profiles: how images of one modality are loaded, normalised and augmented.

A profile bundles the decisions that differ between modalities, so that a bundle selects them
with one config key (``"modality": "ultrasound"``) and the training loop stays the same:

- :meth:`ModalityProfile.preprocess`: deterministic loading, modality normalisation and resizing
  (cacheable: computed once per image).
- :meth:`ModalityProfile.labeled_transforms`: the **weak** augmentation of a labeled image and its mask.
- :meth:`ModalityProfile.unlabeled_transforms`: a **weak** and a **strong** view of an unlabeled image.
  The strong view is the weak view passed through photometric (and occlusion) augmentations only,
  so both views stay pixel-aligned and a pseudo mask from the weak view supervises the strong one.

Images are channel-first ``(C, H, W)`` float tensors in [0, 1]; masks ``(1, H, W)`` in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    Compose,
    CopyItemsd,
    DeleteItemsd,
    EnsureTyped,
    RandAdjustContrastd,
    RandAffined,
    RandCoarseDropoutd,
    RandFlipd,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    Resized,
    ScaleIntensityRanged,
    Transform,
)

from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.transforms.intensity import RandSpeckleNoised
from monai_ssl_ext.transforms.loading import ReadImaged, ReadMaskd

__all__ = ["PROFILES", "ModalityProfile", "UltrasoundProfile", "get_profile", "register_profile"]

PROFILES: dict[str, type[ModalityProfile]] = {}


def register_profile(cls: type[ModalityProfile]) -> type[ModalityProfile]:
    """Class decorator: make a profile selectable by its ``name``."""
    PROFILES[cls.name] = cls
    return cls


def get_profile(name: str, **kwargs) -> ModalityProfile:
    """The profile registered under ``name`` (``"ultrasound"``, ...), constructed with ``kwargs``."""
    if name not in PROFILES:
        raise KeyError(f"Unknown modality '{name}'; available: {sorted(PROFILES)}.")
    return PROFILES[name](**kwargs)


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}.")
    return size  # type: ignore[return-value]


class ModalityProfile:
    """Base class: loading, resizing and weak/strong augmentation for one imaging modality.

    Subclasses override :meth:`normalise`, :meth:`weak` and :meth:`strong`.

    Args:
        image_size: network input size ``(H, W)`` (or one int for square images).
        channels: image channels after loading (greyscale modalities 1, colour 3).
    """

    name = "base"
    default_channels = 1

    def __init__(self, image_size: int | Sequence[int] = 224, channels: int | None = None) -> None:
        self.image_size = _size(image_size)
        self.channels = self.default_channels if channels is None else int(channels)

    # ---------------------------------------------------------------- building blocks
    def read(self, with_mask: bool) -> list[Transform]:
        """Read the image (and mask) from the paths in the entry."""
        out: list[Transform] = [ReadImaged(DataKeys.IMAGE, channels=self.channels)]
        if with_mask:
            out.append(ReadMaskd(DataKeys.MASK, ref_key=DataKeys.IMAGE, allow_missing_keys=True))
        return out

    def normalise(self) -> list[Transform]:
        """Modality-specific intensity or colour normalisation, applied before resizing."""
        return []

    def resize(self, with_mask: bool) -> list[Transform]:
        out: list[Transform] = [Resized(DataKeys.IMAGE, spatial_size=self.image_size, mode="area")]
        if with_mask:
            out.append(Resized(DataKeys.MASK, spatial_size=self.image_size, mode="nearest"))
        return out

    def weak(self, keys: Sequence[str], mask_keys: Sequence[str] = ()) -> list[Transform]:
        """Weak augmentation (mostly geometric) applied jointly to images ``keys`` and masks ``mask_keys``."""
        return []

    def strong(self, keys: Sequence[str]) -> list[Transform]:
        """Strong photometric augmentation of the images under ``keys`` (no geometric change)."""
        return []

    # ---------------------------------------------------------------- pipelines
    def preprocess(self, with_mask: bool = False, keep_meta: bool = False) -> Compose:
        """Deterministic loading + normalisation + resizing (what a cache can hold).

        Args:
            with_mask: also read the ``mask`` entry (missing masks become empty masks).
            keep_meta: keep ``MetaTensor`` metadata (inference writes outputs beside the input);
                training drops it, which makes the random transforms faster.
        """
        keys = [DataKeys.IMAGE, DataKeys.MASK] if with_mask else [DataKeys.IMAGE]
        # an unread mask entry is a path or a list of paths, which cannot be collated into a batch
        drop = [] if with_mask else [DeleteItemsd(DataKeys.MASK)]
        return Compose(
            [
                *drop,
                *self.read(with_mask),
                *self.normalise(),
                *self.resize(with_mask),
                EnsureTyped(keys, track_meta=keep_meta, allow_missing_keys=True),
            ]
        )

    def labeled_transforms(self, with_mask: bool = False) -> Compose:
        """Weak augmentation of a labeled (preprocessed) item."""
        masks = [DataKeys.MASK] if with_mask else []
        return Compose(self.weak([DataKeys.IMAGE], masks))

    def unlabeled_transforms(self) -> Compose:
        """``image`` -> ``image_weak`` (weak view) and ``image_strong`` (strong photometric view of it)."""
        return Compose(
            [
                *self.weak([DataKeys.IMAGE]),
                CopyItemsd(DataKeys.IMAGE, times=2, names=[DataKeys.IMAGE_WEAK, DataKeys.IMAGE_STRONG]),
                DeleteItemsd(DataKeys.IMAGE),
                *self.strong([DataKeys.IMAGE_STRONG]),
            ]
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size}, channels={self.channels})"


@register_profile
class UltrasoundProfile(ModalityProfile):
    """B-mode ultrasound: greyscale, speckle, depth-dependent brightness, no meaningful colour.

    - Loading: one channel (colour overlays such as calipers are reduced to luma), [0, 1].
    - Weak: horizontal flip (left/right is arbitrary in a breast scan; up/down is not: the skin line
      is at the top), small rotation (+-10 degrees), scale (0.9-1.1) and shift (+-6 %), as in the
      weak views of FixMatch (Sohn et al., NeurIPS 2020) restricted to plausible probe motion.
    - Strong (photometric only): gamma (0.7-1.5) for time-gain/dynamic-range differences between
      machines, Gaussian blur (sigma 0.25-1.0 px), multiplicative speckle noise (sigma 0.05-0.2),
      brightness scaling (+-20 %) and one cut-out patch (as FixMatch's strong view). No hue changes:
      B-mode has none.

    Args:
        image_size: network input size.
        channels: 1 (default) or 3 to feed greyscale replicated into RGB-pretrained backbones.
        rotate_degrees: maximum absolute rotation of the weak view.
    """

    name = "ultrasound"
    default_channels = 1

    def __init__(
        self, image_size: int | Sequence[int] = 224, channels: int | None = None, rotate_degrees: float = 10.0
    ) -> None:
        super().__init__(image_size, channels)
        self.rotate_degrees = float(rotate_degrees)

    def weak(self, keys: Sequence[str], mask_keys: Sequence[str] = ()) -> list[Transform]:
        keys, mask_keys = list(keys), list(mask_keys)
        all_keys = keys + mask_keys
        modes = ["bilinear"] * len(keys) + ["nearest"] * len(mask_keys)
        rad = self.rotate_degrees * 3.141592653589793 / 180.0
        shift = [0.06 * s for s in self.image_size]
        return [
            RandFlipd(all_keys, prob=0.5, spatial_axis=1),
            RandAffined(
                all_keys,
                prob=0.5,
                rotate_range=(rad,),
                scale_range=(0.1, 0.1),
                translate_range=shift,
                mode=modes,
                padding_mode="zeros",
            ),
        ]

    def strong(self, keys: Sequence[str]) -> list[Transform]:
        keys = list(keys)
        h, w = self.image_size
        return [
            RandAdjustContrastd(keys, prob=0.8, gamma=(0.7, 1.5)),
            RandGaussianSmoothd(keys, prob=0.5, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
            RandSpeckleNoised(keys, prob=0.8, sigma=(0.05, 0.2)),
            RandScaleIntensityd(keys, prob=0.5, factors=0.2),
            RandCoarseDropoutd(
                keys,
                prob=0.5,
                holes=1,
                spatial_size=(h // 4, w // 4),
                max_spatial_size=(h // 2, w // 2),
                fill_value=0.0,
            ),
            ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
