"""Names shared by data pipelines, networks, algorithms and the trainer.

A semi-supervised iteration moves two dictionaries through the pipeline: a labeled batch with
``image``/``label`` (and ``mask`` for segmentation) and an unlabeled batch with a weak and a strong
view of the same images. Keeping the key names in one place lets a bundle config, a transform and an
algorithm agree without repeating string literals.
"""

from __future__ import annotations


class DataKeys:
    """Keys of the dictionaries produced by datasets and transforms."""

    IMAGE = "image"
    LABEL = "label"
    MASK = "mask"
    GROUP = "group"
    # what a split is stratified by besides the class (a source centre), salted hash like ``group``: unlike a
    # group it spans splits on purpose, so that every split holds each class from the same mix of sources
    STRATUM = "stratum"
    INDEX = "index"
    IMAGE_WEAK = "image_weak"
    IMAGE_STRONG = "image_strong"
    MASK_WEAK = "mask_weak"
    # two independently cropped and augmented views of an unlabeled image, for a contrastive (SimCLR) loss:
    # made instead of the weak/strong pair by ModalityProfile.unlabeled_transforms(views="contrastive")
    IMAGE_VIEW1 = "image_view1"
    IMAGE_VIEW2 = "image_view2"
    # (2, 3) affine of a geometric strong view (strong -> weak, normalised coordinates): see
    # monai_ssl_ext.transforms.randaugment; absent when the strong view is photometric only
    STRONG_AFFINE = "strong_affine"
    # the true label of an unlabeled image: present only in benchmark mode, read by the trainer
    # for pseudo-label accuracy and never handed to an algorithm
    HIDDEN_LABEL = "hidden_label"
    # how an entry's mask is checked ({"resize": bool, "lesion_class": str | None}), set by
    # monai_ssl_ext.data.load_manifest from the manifest and consumed when the mask is read
    MASK_RULES = "mask_rules"
    LABELED = "labeled"
    UNLABELED = "unlabeled"


class OutputKeys:
    """Keys of a network's dictionary output (see :func:`monai_ssl_ext.networks.as_output_dict`)."""

    CLASS = "class"
    SEG = "seg"
    FEATURES = "features"
    # projections that only training losses read (see monai_ssl_ext.networks.HermesNet)
    EMBEDDING = "embedding"
    PIXEL_EMBEDDING = "pixel_embedding"
    CONSISTENCY_CLS = "consistency_cls"
    CONSISTENCY_SEG = "consistency_seg"
