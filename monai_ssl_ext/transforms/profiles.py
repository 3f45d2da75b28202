"""Modality profiles: how images of one modality are loaded, normalised and augmented.

A profile bundles the decisions that differ between modalities, so that a bundle selects them
with one config key (``"modality": "ultrasound"``) and the training loop stays the same:

- :meth:`ModalityProfile.preprocess`: deterministic loading, modality normalisation and resizing
  (cacheable: computed once per image).
- :meth:`ModalityProfile.labeled_transforms`: the **weak** augmentation of a labeled image and its mask.
- :meth:`ModalityProfile.unlabeled_transforms`: a **weak** and a **strong** view of an unlabeled image.
  With ``strong_view="photometric"`` (the default) the strong view is the weak view passed through
  photometric (and occlusion) augmentations only, so both views stay pixel-aligned and a pseudo mask from
  the weak view supervises the strong one. With ``strong_view="randaugment"`` it is a RandAugment-style
  view with geometry (:class:`~monai_ssl_ext.transforms.randaugment.RandAugmentd`: ``strong_ops`` operations
  from the profile's :attr:`~ModalityProfile.randaugment_ops`, magnitude ``strong_magnitude``, then Cutout),
  and the batch also carries ``strong_affine``, the map with which
  :func:`~monai_ssl_ext.transforms.randaugment.warp_to_strong` moves weak-view pixel pseudo labels into
  the strong view's frame.

Images are channel-first ``(C, H, W)`` float tensors in [0, 1]; masks ``(1, H, W)`` in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.transforms import (
    Compose,
    CopyItemsd,
    DeleteItemsd,
    EnsureTyped,
    RandAdjustContrastd,
    RandAffined,
    RandCoarseDropoutd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandScaleCropd,
    RandScaleIntensityd,
    Resized,
    ScaleIntensityRanged,
    Transform,
)

from monai_ssl_ext.io.frames import FrameSpec, parse_frame_policy
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.transforms.colour import RandColorJitterd, ShadesOfGreyd
from monai_ssl_ext.transforms.intensity import RandSpeckleNoised
from monai_ssl_ext.transforms.loading import ReadImaged, ReadMaskd
from monai_ssl_ext.transforms.randaugment import GEOMETRIC_OPS, RandAugmentd
from monai_ssl_ext.transforms.stain import (
    MACENKO_REFERENCE_MAX_CONCENTRATIONS,
    MACENKO_REFERENCE_STAIN_MATRIX,
    MacenkoNormalized,
    RandHEDJitterd,
)

__all__ = [
    "PROFILES",
    "STRONG_VIEWS",
    "UNLABELED_VIEWS",
    "DermoscopyProfile",
    "HistologyProfile",
    "ModalityProfile",
    "UltrasoundProfile",
    "XRayProfile",
    "get_profile",
    "register_profile",
]

PROFILES: dict[str, type[ModalityProfile]] = {}
#: the strong views a profile can make (``strong_view``)
STRONG_VIEWS = ("photometric", "randaugment")
#: what an unlabeled item holds (``unlabeled_transforms(views=...)``)
UNLABELED_VIEWS = ("weak_strong", "contrastive")


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
        frame: which frame of a multi-frame file (DICOM cine, NIfTI time series) to read: ``"first"``,
            ``"middle"``, ``"last"``, an index, or ``"every:k"`` for every k-th frame as separate samples
            (the manifest is expanded by :func:`~monai_ssl_ext.data.load_manifest` with ``frames``).
            See :mod:`monai_ssl_ext.io.frames`.
        crop_to_region: crop ultrasound DICOM to the imaging region of its Sequence of Ultrasound
            Regions (``True``: the main tissue region; an int: that region), dropping the surrounding
            user interface, calipers and burned-in text. ``None``: the modality's default
            (:attr:`crop_by_default`: on for ultrasound, so burned-in text never reaches the network).
        strong_view: ``"photometric"`` (default; the strong view of :meth:`strong`, pixel-aligned with the
            weak view) or ``"randaugment"`` (:meth:`randaugment`: geometric and photometric operations, then
            Cutout; the unlabeled items gain ``strong_affine``, see :mod:`monai_ssl_ext.transforms.randaugment`).
        strong_ops: RandAugment's N, operations per strong view (``"randaugment"`` only).
        strong_magnitude: RandAugment's M in [0, 10] (10: the maxima of
            :data:`~monai_ssl_ext.transforms.randaugment.OP_MAX`); ``"randaugment"`` only.
        strong_random_magnitude: draw each operation's magnitude from ``U(0, strong_magnitude)`` (FixMatch's
            variant, default) instead of using ``strong_magnitude`` itself.
        strong_op_pool: operation names replacing the profile's :attr:`randaugment_ops`.
    """

    name = "base"
    default_channels = 1
    #: DICOM Modality values (0008,0060) of the images this profile is for; the first is the one a bundle's
    #: metadata declares. Inference refuses a DICOM input of another modality.
    dicom_modalities: tuple[str, ...] = ("OT",)
    #: SOP Class UIDs (0008,0016) of the DICOM images this profile is for; empty: any SOP class that holds an
    #: image. With :attr:`dicom_modalities` they are the selection an exported model declares (MONAI Deploy).
    dicom_sop_classes: tuple[str, ...] = ()
    #: whether ``crop_to_region=None`` crops DICOM to its ultrasound imaging region
    crop_by_default = False
    #: the pool of RandAugment operations: what is physically sensible for the modality. The base pool is
    #: for grey modalities such as X-ray: geometry and grey-level operations, additive (quantum) noise, no colour.
    randaugment_ops: tuple[str, ...] = (
        *GEOMETRIC_OPS,
        "brightness",
        "contrast",
        "gamma",
        "sharpness",
        "blur",
        "noise",
        "posterize",
        "equalize",
        "autocontrast",
    )
    #: grey modality (one channel, or grey replicated to three): colour operations refused, noise shared
    grey = True
    #: value of the Cutout patch of the strong views
    cutout_fill = 0.0
    #: smallest side of a contrastive view's random crop, as a share of the image's side (each side drawn
    #: independently in [share, 1], so the crop's area and aspect ratio both vary, as SimCLR's random resized crop)
    contrastive_crop_min = 0.3

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        channels: int | None = None,
        frame: FrameSpec = None,
        crop_to_region: bool | int | None = None,
        strong_view: str = "photometric",
        strong_ops: int = 2,
        strong_magnitude: float = 10.0,
        strong_random_magnitude: bool = True,
        strong_op_pool: Sequence[str] | None = None,
    ) -> None:
        self.image_size = _size(image_size)
        self.channels = self.default_channels if channels is None else int(channels)
        self.frame = parse_frame_policy(frame)
        self.crop_to_region = self.crop_by_default if crop_to_region is None else crop_to_region
        if strong_view not in STRONG_VIEWS:
            raise ValueError(f"strong_view must be one of {STRONG_VIEWS}, got {strong_view!r}.")
        self.strong_view = strong_view
        self.strong_ops = int(strong_ops)
        self.strong_magnitude = float(strong_magnitude)
        self.strong_random_magnitude = bool(strong_random_magnitude)
        self.strong_op_pool = tuple(strong_op_pool) if strong_op_pool is not None else tuple(self.randaugment_ops)
        if strong_view == "randaugment":  # validate the options here rather than in a data-loading worker
            RandAugmentd(
                DataKeys.IMAGE_STRONG, self.strong_op_pool, self.strong_ops, self.strong_magnitude, grey=self.grey
            )

    # ---------------------------------------------------------------- building blocks
    def read(self, with_mask: bool) -> list[Transform]:
        """Read the image (and mask) from the paths in the entry."""
        out: list[Transform] = [
            ReadImaged(DataKeys.IMAGE, channels=self.channels, frame=self.frame, crop_to_region=self.crop_to_region)
        ]
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

    def randaugment_options(self) -> dict[str, Any]:
        """Extra keyword arguments of :class:`RandAugmentd` for this modality (the histology stain ranges)."""
        return {}

    def randaugment(self, keys: Sequence[str]) -> list[Transform]:
        """RandAugment-style strong view with geometry of the images under ``keys`` (``strong_view="randaugment"``).

        ``strong_ops`` operations from ``strong_op_pool`` with magnitude ``strong_magnitude``, then a Cutout
        patch (always, as FixMatch's strong view; 1/4-1/2 of each side, filled with :attr:`cutout_fill`);
        the ``(2, 3)`` affine of the geometry is stored under ``strong_affine``.
        """
        return [
            RandAugmentd(
                list(keys),
                ops=self.strong_op_pool,
                num_ops=self.strong_ops,
                magnitude=self.strong_magnitude,
                random_magnitude=self.strong_random_magnitude,
                grey=self.grey,
                cutout_prob=1.0,
                cutout_size=(0.25, 0.5),
                fill=self.cutout_fill,
                affine_key=DataKeys.STRONG_AFFINE,
                **self.randaugment_options(),
            )
        ]

    def contrastive_view(self, key: str) -> list[Transform]:
        """One SimCLR-style view of the image under ``key``, drawn independently of any other view.

        A random crop (each side a share in ``[contrastive_crop_min, 1]`` of the image's, at a random place)
        resized back to ``image_size``, the modality's weak geometric augmentation and its strong photometric
        one: two such views of an image differ in geometry as well as in intensity, which is what a contrastive
        loss needs to learn more than low-level statistics (Chen et al., ICML 2020: cropping is the one
        augmentation it cannot do without).
        """
        return [
            RandScaleCropd(key, roi_scale=self.contrastive_crop_min, max_roi_scale=1.0, random_size=True),
            Resized(key, spatial_size=self.image_size, mode="area"),
            *self.weak([key]),
            *self.strong([key]),
        ]

    # ---------------------------------------------------------------- pipelines
    def preprocess(self, with_mask: bool = False, keep_meta: bool = False, read: bool = True) -> Compose:
        """Deterministic loading + normalisation + resizing (what a cache can hold).

        Args:
            with_mask: also read the ``mask`` entry (missing masks become empty masks).
            keep_meta: keep ``MetaTensor`` metadata (inference writes outputs beside the input);
                training drops it, which makes the random transforms faster.
            read: start by reading the files the entry names (:meth:`read`). ``False``: the entry already holds
                the image as :meth:`read` returns it, a ``MetaTensor`` in memory, and no file is opened (MONAI
                Deploy, whose loader reads the pixels: ``Compose(read(False))`` then this is the whole pipeline).
        """
        keys = [DataKeys.IMAGE, DataKeys.MASK] if with_mask else [DataKeys.IMAGE]
        # an unread mask entry is a path or a list of paths, which cannot be collated into a batch; its rules
        # (see monai_ssl_ext.data.add_mask_rules) are removed by the mask reader, or here when no mask is read
        drop = [] if with_mask else [DeleteItemsd([DataKeys.MASK, DataKeys.MASK_RULES])]
        return Compose(
            [
                *drop,
                *(self.read(with_mask) if read else []),
                *self.normalise(),
                *self.resize(with_mask),
                EnsureTyped(keys, track_meta=keep_meta, allow_missing_keys=True),
            ]
        )

    def labeled_transforms(self, with_mask: bool = False) -> Compose:
        """Weak augmentation of a labeled (preprocessed) item."""
        masks = [DataKeys.MASK] if with_mask else []
        return Compose(self.weak([DataKeys.IMAGE], masks))

    def unlabeled_transforms(self, views: str = "weak_strong") -> Compose:
        """``image`` -> ``image_weak`` (weak view) and ``image_strong`` (strong view of it).

        ``strong_view="photometric"``: :meth:`strong` (pixel-aligned). ``"randaugment"``: :meth:`randaugment`,
        which adds ``strong_affine`` (see :func:`~monai_ssl_ext.transforms.randaugment.warp_to_strong`); the
        weak view is the same as with ``"photometric"`` for the same seed.

        ``views="contrastive"``: ``image`` -> ``image_view1`` and ``image_view2`` instead, two independent
        :meth:`contrastive_view` draws (for a contrastive loss, SEMISE's NT-Xent); no weak/strong pair.
        """
        if views not in UNLABELED_VIEWS:
            raise ValueError(f"views must be one of {UNLABELED_VIEWS}, got {views!r}.")
        if views == "contrastive":
            first, second = DataKeys.IMAGE_VIEW1, DataKeys.IMAGE_VIEW2
            return Compose(
                [
                    CopyItemsd(DataKeys.IMAGE, times=2, names=[first, second]),
                    DeleteItemsd(DataKeys.IMAGE),
                    *self.contrastive_view(first),
                    *self.contrastive_view(second),
                ]
            )
        strong = self.strong if self.strong_view == "photometric" else self.randaugment
        return Compose(
            [
                *self.weak([DataKeys.IMAGE]),
                CopyItemsd(DataKeys.IMAGE, times=2, names=[DataKeys.IMAGE_WEAK, DataKeys.IMAGE_STRONG]),
                DeleteItemsd(DataKeys.IMAGE),
                *strong([DataKeys.IMAGE_STRONG]),
            ]
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size}, channels={self.channels}{self._strong_repr()})"

    def _strong_repr(self) -> str:
        if self.strong_view == "photometric":
            return ""
        return (
            f", strong_view={self.strong_view!r}, strong_ops={self.strong_ops}, "
            f"strong_magnitude={self.strong_magnitude}"
        )


class _GreyPositionedProfile(ModalityProfile):
    """Grey modalities with a patient or probe position (ultrasound, X-ray): what their views share.

    - Weak: :meth:`positioning`, a small rotation, scale and shift of images and masks together.
    - Strong (photometric only): gamma (0.7-1.5), Gaussian blur (sigma 0.25-1.0 px), the modality's
      :meth:`noise`, brightness scaling (+-20 %), one cut-out patch filled with :attr:`cutout_fill`, clipping
      to [0, 1].

    Args:
        image_size: network input size.
        channels: 1 (default) or 3 to feed grey replicated into RGB-pretrained backbones.
        rotate_degrees: maximum absolute rotation of the weak view.
        reader_options: ``frame``, ``crop_to_region`` and the ``strong_*`` options, see :class:`ModalityProfile`.
    """

    default_channels = 1
    grey = True
    cutout_fill = 0.0

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        channels: int | None = None,
        rotate_degrees: float = 10.0,
        **reader_options: Any,
    ) -> None:
        super().__init__(image_size, channels, **reader_options)
        self.rotate_degrees = float(rotate_degrees)

    def positioning(self, keys: list[str], mask_keys: list[str]) -> Transform:
        """Rotation up to ``rotate_degrees``, scale 0.9-1.1, shift +-6 % of images and masks together (p 0.5)."""
        modes = ["bilinear"] * len(keys) + ["nearest"] * len(mask_keys)
        return RandAffined(
            keys + mask_keys,
            prob=0.5,
            rotate_range=(self.rotate_degrees * 3.141592653589793 / 180.0,),
            scale_range=(0.1, 0.1),
            translate_range=[0.06 * s for s in self.image_size],
            mode=modes,
            padding_mode="zeros",
        )

    def noise(self, keys: list[str]) -> Transform:
        """The modality's noise in the strong view."""
        raise NotImplementedError

    def strong(self, keys: Sequence[str]) -> list[Transform]:
        keys = list(keys)
        return [
            RandAdjustContrastd(keys, prob=0.8, gamma=(0.7, 1.5)),
            RandGaussianSmoothd(keys, prob=0.5, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
            self.noise(keys),
            RandScaleIntensityd(keys, prob=0.5, factors=0.2),
            _cutout(keys, self.image_size, self.cutout_fill),
            _clip(keys),
        ]


@register_profile
class UltrasoundProfile(_GreyPositionedProfile):
    """B-mode ultrasound: greyscale, speckle, depth-dependent brightness, no meaningful colour.

    - Loading: one channel (colour overlays such as calipers are reduced to luma), [0, 1].
    - Weak: horizontal flip (left/right is arbitrary in a breast scan; up/down is not: the skin line
      is at the top), small rotation (+-10 degrees), scale (0.9-1.1) and shift (+-6 %), as in the
      weak views of FixMatch (Sohn et al., NeurIPS 2020) restricted to plausible probe motion.
    - Strong (photometric only): gamma (0.7-1.5) for time-gain/dynamic-range differences between
      machines, Gaussian blur (sigma 0.25-1.0 px), multiplicative speckle noise (sigma 0.05-0.2),
      brightness scaling (+-20 %) and one cut-out patch (as FixMatch's strong view). No hue changes:
      B-mode has none.
    - Strong, ``strong_view="randaugment"``: geometry (rotation, shear, translation, scale) and grey-level
      operations (brightness, contrast, gamma, sharpness, blur, multiplicative speckle, posterize, equalize,
      autocontrast), then Cutout filled with 0 (black, as the background of the sector). No colour
      operations, and noise is the same in every channel, so replicated-grey inputs stay grey.

    Args: as :class:`_GreyPositionedProfile`.
    """

    name = "ultrasound"
    dicom_modalities = ("US",)
    # Ultrasound Image Storage and Ultrasound Multi-frame Image Storage, with their retired predecessors
    dicom_sop_classes = (
        "1.2.840.10008.5.1.4.1.1.6.1",
        "1.2.840.10008.5.1.4.1.1.3.1",
        "1.2.840.10008.5.1.4.1.1.6",
        "1.2.840.10008.5.1.4.1.1.3",
    )
    crop_by_default = True
    randaugment_ops = (
        *GEOMETRIC_OPS,
        "brightness",
        "contrast",
        "gamma",
        "sharpness",
        "blur",
        "speckle",
        "posterize",
        "equalize",
        "autocontrast",
    )

    def weak(self, keys: Sequence[str], mask_keys: Sequence[str] = ()) -> list[Transform]:
        keys, mask_keys = list(keys), list(mask_keys)
        return [
            RandFlipd(keys + mask_keys, prob=0.5, spatial_axis=1),
            self.positioning(keys, mask_keys),
        ]

    def noise(self, keys: list[str]) -> Transform:
        return RandSpeckleNoised(keys, prob=0.8, sigma=(0.05, 0.2))


@register_profile
class XRayProfile(_GreyPositionedProfile):
    """Projection radiography (chest X-ray): one grey channel, anatomy with a fixed left and right.

    - Loading: one channel, [0, 1] (colour files reduced to luma).
    - Weak: small rotation (+-10 degrees), scale (0.9-1.1) and shift (+-6 %): patient positioning. No
      flips: a mirrored chest (heart on the right) is not a plausible radiograph, and the side of a finding
      can matter to its label.
    - Strong (photometric only): gamma (0.7-1.5) for exposure and processing differences, Gaussian blur
      (sigma 0.25-1.0 px), additive Gaussian noise (quantum noise, std up to 0.05), brightness scaling
      (+-20 %) and one cut-out patch. No colour.
    - Strong, ``strong_view="randaugment"``: the grey operation pool of :class:`ModalityProfile` (geometry,
      brightness, contrast, gamma, sharpness, blur, additive noise, posterize, equalize, autocontrast),
      then Cutout filled with 0.

    Args: as :class:`_GreyPositionedProfile`.
    """

    name = "xray"
    # digital and computed radiography; RG: radiographic imaging (conventional film/screen, digitised)
    dicom_modalities = ("DX", "CR", "RG")
    # CR Image Storage; Digital X-Ray Image Storage for presentation and for processing; secondary capture
    # (digitised film)
    dicom_sop_classes = (
        "1.2.840.10008.5.1.4.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.7",
    )

    def weak(self, keys: Sequence[str], mask_keys: Sequence[str] = ()) -> list[Transform]:
        return [self.positioning(list(keys), list(mask_keys))]

    def noise(self, keys: list[str]) -> Transform:
        return RandGaussianNoised(keys, prob=0.8, std=0.05)


def _require_rgb(profile: ModalityProfile) -> None:
    if profile.channels != 3:
        raise ValueError(
            f"the {profile.name} profile works on RGB images (channels=3); its colour transforms are undefined "
            f"for channels={profile.channels}."
        )


def _dihedral(profile: ModalityProfile, keys: list[str]) -> list[Transform]:
    """Flips of both axes and, for square inputs, 90-degree rotations: exact, interpolation-free symmetries.

    A 90-degree rotation of a non-square image swaps height and width, which a batch cannot hold; the two
    flips together still give the 180-degree rotation.
    """
    out: list[Transform] = [
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
    ]
    h, w = profile.image_size
    if h == w:
        # k = 1..3 when applied, so with probability 0.75 every quarter turn (0 included) is equally likely
        out.append(RandRotate90d(keys, prob=0.75, max_k=3))
    return out


def _cutout(keys: list[str], size: tuple[int, int], fill: float) -> Transform:
    h, w = size
    return RandCoarseDropoutd(
        keys, prob=0.5, holes=1, spatial_size=(h // 4, w // 4), max_spatial_size=(h // 2, w // 2), fill_value=fill
    )


def _clip(keys: list[str]) -> Transform:
    return ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True)


@register_profile
class DermoscopyProfile(ModalityProfile):
    """Dermoscopy (e.g. ISIC / HAM10000): RGB photographs of skin lesions, no canonical orientation.

    Images are ``(3, H, W)`` in [0, 1], lesion masks ``(1, H, W)`` in {0, 1}.

    - Normalisation (in :meth:`preprocess`, before resizing): shades-of-grey colour constancy with p = 6
      (:class:`~monai_ssl_ext.transforms.colour.ShadesOfGrey`; Finlayson & Trezzi 2004), which removes the
      colour cast of different dermatoscopes and light sources; used by Barata et al. (IEEE JBHI 2015) and
      by ISIC challenge entries (e.g. Ng et al.). ``colour_constancy=False`` keeps the raw colours.
    - Weak (image and mask jointly): flips of both axes and 90-degree rotations (a dermatoscope may be held
      at any angle, so all eight symmetries of the square are plausible; rotations only for square inputs),
      then with probability 0.5 a free rotation of up to +-``rotate_degrees`` (45 by default, so that with
      the 90-degree steps every angle occurs) and a scale of 0.9-1.1 (small zoom changes of the same lesion).
      Corners uncovered by the rotation are black, like the vignette of many dermatoscopes.
      Flips and rotations of skin images are the geometric augmentations of Perez et al., "Data augmentation
      for skin lesion analysis" (ISIC Skin Image Analysis Workshop, MICCAI 2018).
    - Strong (photometric and occlusion only, so the views stay pixel-aligned): colour jitter with
      probability 0.8 (the rate of SimCLR's colour distortion, Chen et al. 2020), brightness, contrast and
      saturation factors in [0.7, 1.3] and a hue shift in [-0.1, 0.1] turns (the ranges of Perez et al. 2018);
      Gaussian blur (sigma 0.25-1.0 px, probability 0.5); one cut-out patch of 1/4-1/2 of each side
      (probability 0.5, FixMatch's strong view, Sohn et al. 2020) filled with mid-grey 0.5 (Cutout,
      DeVries & Taylor 2017, zeroes a mean-subtracted input, i.e. fills with the mean); clipped to [0, 1].
    - Strong, ``strong_view="randaugment"``: geometry (rotation, shear, translation, scale), brightness,
      contrast, gamma, saturation, hue, sharpness, blur, posterize, equalize, autocontrast (FixMatch's
      RandAugment pool without solarize and invert, which no dermatoscope produces), then Cutout with 0.5.

    Args:
        image_size: network input size.
        channels: must be 3.
        colour_constancy: apply shades-of-grey colour constancy in :meth:`preprocess`.
        power: Minkowski norm of shades of grey.
        rotate_degrees: maximum absolute free rotation of the weak view.
        reader_options: ``frame``, ``crop_to_region`` and the ``strong_*`` options, see :class:`ModalityProfile`.
    """

    name = "dermoscopy"
    # external-camera photography, and other (secondary capture) for photographs converted to DICOM
    dicom_modalities = ("XC", "OT")
    # VL Photographic Image Storage; single- and multi-frame true colour secondary capture
    dicom_sop_classes = ("1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4")
    default_channels = 3
    randaugment_ops = (
        *GEOMETRIC_OPS,
        "brightness",
        "contrast",
        "gamma",
        "saturation",
        "hue",
        "sharpness",
        "blur",
        "posterize",
        "equalize",
        "autocontrast",
    )
    grey = False
    cutout_fill = 0.5

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        channels: int | None = None,
        colour_constancy: bool = True,
        power: float = 6.0,
        rotate_degrees: float = 45.0,
        **reader_options: Any,
    ) -> None:
        super().__init__(image_size, channels, **reader_options)
        _require_rgb(self)
        self.colour_constancy = bool(colour_constancy)
        self.power = float(power)
        self.rotate_degrees = float(rotate_degrees)

    def normalise(self) -> list[Transform]:
        return [ShadesOfGreyd(DataKeys.IMAGE, power=self.power)] if self.colour_constancy else []

    def weak(self, keys: Sequence[str], mask_keys: Sequence[str] = ()) -> list[Transform]:
        keys, mask_keys = list(keys), list(mask_keys)
        all_keys = keys + mask_keys
        modes = ["bilinear"] * len(keys) + ["nearest"] * len(mask_keys)
        rad = self.rotate_degrees * 3.141592653589793 / 180.0
        return [
            *_dihedral(self, all_keys),
            RandAffined(
                all_keys, prob=0.5, rotate_range=(rad,), scale_range=(0.1, 0.1), mode=modes, padding_mode="zeros"
            ),
        ]

    def strong(self, keys: Sequence[str]) -> list[Transform]:
        keys = list(keys)
        return [
            RandColorJitterd(keys, prob=0.8, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1),
            RandGaussianSmoothd(keys, prob=0.5, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
            _cutout(keys, self.image_size, fill=0.5),
            _clip(keys),
        ]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, channels={self.channels}, "
            f"colour_constancy={self.colour_constancy}{self._strong_repr()})"
        )


@register_profile
class HistologyProfile(ModalityProfile):
    """H&E histology patches (e.g. NCT-CRC-HE-100K): RGB, stain variation between laboratories, no orientation.

    Images are ``(3, H, W)`` in [0, 1]; masks, where given, ``(1, H, W)`` in {0, 1}.

    - Normalisation (in :meth:`preprocess`, before resizing): optional Macenko stain normalisation
      (:class:`~monai_ssl_ext.transforms.stain.MacenkoNormalize`; Macenko et al., ISBI 2009) to the reference
      H&E vectors H (0.5626, 0.7201, 0.4062), E (0.2159, 0.8012, 0.5581) and maximum concentrations
      (1.9705, 1.0308) of the Python port of the paper's MATLAB code (torchstain's defaults), or to
      ``stain_matrix`` / ``max_concentrations``. **Off by default**: Tellez et al. (Medical Image Analysis
      2019) found stain colour augmentation (which the strong view applies) to be the main gain across
      laboratories, with normalisation adding little on top of it; NCT-CRC-HE-100K is distributed already
      Macenko-normalised; and the estimation costs a few full-image passes per image (it runs once per
      image, in the cacheable pre-processing). Patches with too little stained tissue (glass, fat, mucus)
      keep their colours, are logged, and a ``MetaTensor`` records ``meta["stain_normalised"] = False``.
    - Weak (image and mask jointly): flips of both axes and 90-degree rotations (square inputs), the
      "basic" augmentation of Tellez et al. 2019: a patch seen under the microscope has no up or down, and
      these symmetries need no interpolation.
    - Strong (photometric and occlusion only): HED stain jitter with probability 0.8
      (:class:`~monai_ssl_ext.transforms.stain.RandHEDJitter`, Tellez et al. 2018/2019; per stain
      ``alpha ~ U(1 - hed_sigma, 1 + hed_sigma)``, ``beta ~ U(-hed_bias, hed_bias)`` with Ruifrok &
      Johnston's H, E, DAB vectors; defaults 0.2 and 0.05 OD, see the class), mild brightness and contrast
      changes (factors 0.9-1.1, probability 0.5, scanner exposure; Tellez's "BC" augmentation), Gaussian
      blur (sigma 0.25-1.0 px, probability 0.5, focus differences between scanners), one cut-out patch
      filled with mid-grey 0.5 (probability 0.5, as the other profiles), clipped to [0, 1]. No hue jitter:
      the HED perturbation already moves the colours along the physically possible stain directions.
    - Strong, ``strong_view="randaugment"``: geometry (rotation, shear, translation, scale), HED stain jitter
      (``hed_sigma`` and ``hed_bias`` at magnitude 10), brightness, contrast, saturation, sharpness, blur,
      posterize, then Cutout with 0.5. No hue rotation, per-channel equalisation or autocontrast: they move
      colours off the stain directions.

    Args:
        image_size: network input size.
        channels: must be 3.
        stain_normalisation: apply Macenko normalisation in :meth:`preprocess`.
        stain_matrix: reference ``(2, 3)`` H and E OD vectors (default: the reference above).
        max_concentrations: reference maximum H and E concentrations (default: the reference above).
        on_stain_failure: ``"keep"`` (default: keep the image, warn, record) or ``"raise"``.
        hed_sigma: multiplicative half-range of the HED jitter.
        hed_bias: additive half-range of the HED jitter (OD units).
        reader_options: ``frame``, ``crop_to_region`` and the ``strong_*`` options, see :class:`ModalityProfile`.
    """

    name = "histology"
    dicom_modalities = ("SM", "OT")  # slide microscopy
    # VL Microscopic and VL Slide-Coordinates Microscopic Image Storage; secondary capture (tiles exported as
    # images). Whole-slide images (VL Whole Slide Microscopy) are pyramids of tiles, which the reader does not read.
    dicom_sop_classes = (
        "1.2.840.10008.5.1.4.1.1.77.1.2",
        "1.2.840.10008.5.1.4.1.1.77.1.3",
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.4",
    )
    default_channels = 3
    randaugment_ops = (
        *GEOMETRIC_OPS,
        "hed",
        "brightness",
        "contrast",
        "saturation",
        "sharpness",
        "blur",
        "posterize",
    )
    grey = False
    cutout_fill = 0.5

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        channels: int | None = None,
        stain_normalisation: bool = False,
        stain_matrix: Sequence[Sequence[float]] = MACENKO_REFERENCE_STAIN_MATRIX,
        max_concentrations: Sequence[float] = MACENKO_REFERENCE_MAX_CONCENTRATIONS,
        on_stain_failure: str = "keep",
        hed_sigma: float = 0.2,
        hed_bias: float = 0.05,
        **reader_options: Any,
    ) -> None:
        super().__init__(image_size, channels, **reader_options)
        _require_rgb(self)
        self.stain_normalisation = bool(stain_normalisation)
        self.stain_matrix = stain_matrix
        self.max_concentrations = max_concentrations
        self.on_stain_failure = on_stain_failure
        self.hed_sigma = float(hed_sigma)
        self.hed_bias = float(hed_bias)

    def normalise(self) -> list[Transform]:
        if not self.stain_normalisation:
            return []
        return [
            MacenkoNormalized(
                DataKeys.IMAGE,
                stain_matrix=self.stain_matrix,
                max_concentrations=self.max_concentrations,
                on_failure=self.on_stain_failure,
            )
        ]

    def weak(self, keys: Sequence[str], mask_keys: Sequence[str] = ()) -> list[Transform]:
        return _dihedral(self, list(keys) + list(mask_keys))

    def randaugment_options(self) -> dict[str, Any]:
        return {"hed_sigma": self.hed_sigma, "hed_bias": self.hed_bias}

    def strong(self, keys: Sequence[str]) -> list[Transform]:
        keys = list(keys)
        return [
            RandHEDJitterd(keys, prob=0.8, sigma=self.hed_sigma, bias=self.hed_bias),
            RandColorJitterd(keys, prob=0.5, brightness=0.1, contrast=0.1),
            RandGaussianSmoothd(keys, prob=0.5, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
            _cutout(keys, self.image_size, fill=0.5),
            _clip(keys),
        ]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, channels={self.channels}, "
            f"stain_normalisation={self.stain_normalisation}{self._strong_repr()})"
        )
