"""The two-branch classification + segmentation network of Hermes (Zhang et al., ECAI 2025)."""

from __future__ import annotations

import os
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.networks.attention import InterTaskAttention, SaliencyPooling, lesion_saliency
from monai_ssl_ext.networks.backbones import build_encoder
from monai_ssl_ext.networks.heads import UNetDecoder
from monai_ssl_ext.networks.projection import ProjectionHead

__all__ = ["HermesNet", "ProjectionHead"]


class HermesNet(nn.Module):
    """A classifier and a U-Net segmenter of the same image, coupled by inter-task attention and saliency.

    As in Hermes the two tasks have their own encoders (ImageNet-initialised in the paper). The
    segmenter runs first; each of the classifier's first four stages (strides 2, 4, 8, 16) is then
    re-weighted by :class:`~monai_ssl_ext.networks.attention.InterTaskAttention` with the decoder
    block of the same stride, and the classifier pools its last stage with the segmenter's lesion
    probability as saliency (:class:`~monai_ssl_ext.networks.attention.SaliencyPooling`).

    Input ``(B, C_in, H, W)``. Outputs, by mode:

    - training (``return_dict`` and ``training_outputs``): ``class`` ``(B, num_classes)`` logits,
      ``seg`` ``(B, seg_classes, H, W)`` logits, ``features`` ``(B, F)`` pooled classifier features,
      ``embedding`` ``(B, embed_dim)`` (supervised contrastive loss), ``pixel_embedding``
      ``(B, pixel_embed_dim, H/4, W/4)`` (pixel contrastive loss), ``consistency_cls`` and
      ``consistency_seg`` ``(B, consistency_dim)``: the lesion features of both branches that the
      inter-task consistency loss aligns;
    - prediction (``return_dict``, not ``training_outputs``): ``class`` and ``seg`` only (what
      inference and the exported TorchScript model return);
    - classification (not ``return_dict``): the class logits tensor.

    Args:
        num_classes: image classes.
        seg_classes: segmentation classes including background.
        in_channels: input channels.
        backbone: encoder of both branches (see :func:`~monai_ssl_ext.networks.build_encoder`).
        pretrained: weights for both encoders: a local file, or the name of an installed weights package.
        decoder_channels: widths of the four U-Net decoder blocks.
        attention: use inter-task attention (``False``: the branches meet only through saliency).
        saliency: use saliency-guided pooling (``False``: global average pooling).
        embed_dim: size of the contrastive embedding.
        pixel_embed_dim: channels of the pixel embedding.
        consistency_dim: size of the inter-task consistency projections.
        dropout: dropout before the classification layer.
        return_dict, training_outputs: select the mode above (TorchScript constants).
        normalize_input: scale ``[0, 1]`` inputs as the pretrained weights expect (``None``: when
            ``pretrained``); a network rebuilt for inference from a pretrained-trained model sets it.
        separate_task_gradients: each task's loss trains only its own branch, as in the authors' code (two
            models, two optimisers, the segmenter's gradients zeroed before its own backward): the classifier
            reads the segmenter's decoder features and saliency as constants, and ``consistency_cls`` is a
            constant target, so the inter-task consistency moves the segmenter only. With one backward pass
            of the summed loss every parameter then gets exactly the gradient of its own branch's loss.
            ``False``: classification gradients also flow into the segmenter through attention and saliency.

    Branches (:meth:`branches`, for one optimiser each): ``classifier`` (its encoder, the attention blocks,
    the pooling, the head, ``embedding`` and ``consistency_cls``) and ``segmenter`` (its encoder, the
    decoder, the segmentation head, ``pixel_embedding`` and ``consistency_seg``).
    """

    __constants__ = ["return_dict", "training_outputs", "separate_task_gradients"]
    BRANCHES: ClassVar[dict[str, tuple[str, ...]]] = {
        "classifier": ("cls_encoder", "attention", "pool", "head", "embedding", "consistency_cls"),
        "segmenter": ("seg_encoder", "decoder", "seg_head", "pixel_embedding", "consistency_seg"),
    }

    def __init__(
        self,
        num_classes: int,
        seg_classes: int = 2,
        in_channels: int = 1,
        backbone: str = "resnet18",
        pretrained: str | os.PathLike | None = None,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32),
        attention: bool = True,
        saliency: bool = True,
        embed_dim: int = 128,
        pixel_embed_dim: int = 64,
        consistency_dim: int = 256,
        dropout: float = 0.0,
        return_dict: bool = True,
        training_outputs: bool = True,
        normalize_input: bool | None = None,
        separate_task_gradients: bool = True,
    ) -> None:
        super().__init__()
        self.seg_encoder = build_encoder(backbone, in_channels, pretrained, normalize_input)
        self.cls_encoder = build_encoder(backbone, in_channels, pretrained, normalize_input)
        enc = list(self.cls_encoder.out_channels)
        self.decoder = UNetDecoder(list(self.seg_encoder.out_channels), tuple(decoder_channels))
        self.seg_head = nn.Conv2d(self.decoder.out_channels, seg_classes, kernel_size=1)
        dec = self.decoder.block_channels  # strides 16, 8, 4, 2
        # classifier stage i (stride 2^(i+1)) meets decoder block 3 - i of the same stride
        self.attention = nn.ModuleList([InterTaskAttention(enc[i], dec[3 - i]) for i in range(4)] if attention else [])
        self.pool = SaliencyPooling(enabled=saliency)
        self.feature_dim = enc[-1]
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, num_classes)
        self.embedding = ProjectionHead(self.feature_dim, embed_dim)
        self.pixel_embedding = nn.Sequential(
            nn.Conv2d(dec[2], dec[2], kernel_size=1, bias=False),
            nn.BatchNorm2d(dec[2]),
            nn.ReLU(inplace=True),
            nn.Conv2d(dec[2], pixel_embed_dim, kernel_size=1),
        )
        self.consistency_cls = ProjectionHead(self.feature_dim, consistency_dim)
        self.consistency_seg = ProjectionHead(self.seg_encoder.out_channels[-1], consistency_dim)
        self.num_classes = num_classes
        self.seg_classes = seg_classes
        self.return_dict = return_dict
        self.training_outputs = training_outputs
        self.separate_task_gradients = separate_task_gradients

    def branches(self) -> dict[str, nn.ModuleDict]:
        """Branch name -> its sub-modules; every parameter belongs to exactly one branch."""
        return {name: nn.ModuleDict({m: getattr(self, m) for m in members}) for name, members in self.BRANCHES.items()}

    def forward(self, x: torch.Tensor):
        seg_stages = self.seg_encoder(x)
        blocks = self.decoder.forward_blocks(seg_stages)
        seg = F.interpolate(self.seg_head(blocks[-1]), size=x.shape[-2:], mode="bilinear", align_corners=False)
        saliency = lesion_saliency(seg)
        # what the classifier reads from the segmenter
        seg_blocks, cls_saliency = blocks, saliency
        if self.separate_task_gradients:
            seg_blocks, cls_saliency = [b.detach() for b in blocks], saliency.detach()

        h = x
        for i, attend in enumerate(self.attention):
            h = attend(self.cls_encoder.forward_stage(h, i), seg_blocks[3 - i])
        for i in range(len(self.attention), 5):
            h = self.cls_encoder.forward_stage(h, i)
        features = self.pool(h, cls_saliency)
        logits = self.head(self.dropout(features))
        if not self.return_dict:
            return logits
        if not self.training_outputs:
            return {"class": logits, "seg": seg}  # OutputKeys; TorchScript needs literals
        consistency_cls = self.consistency_cls(features)
        if self.separate_task_gradients:
            consistency_cls = consistency_cls.detach()
        return {
            "class": logits,
            "seg": seg,
            "features": features,
            "embedding": self.embedding(features),
            "pixel_embedding": self.pixel_embedding(blocks[2]),
            "consistency_cls": consistency_cls,
            "consistency_seg": self.consistency_seg(self.pool(seg_stages[-1], saliency)),
        }
