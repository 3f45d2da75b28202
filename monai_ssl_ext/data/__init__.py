"""Manifests, label budgets, data set builders and the iteration-indexed training streams."""

from .datalist import expand_frames, load_manifest
from .inputs import IMAGE_SUFFIXES, list_inputs
from .label_budget import LabelBudgetError, LabelSplit, resolve_budget, split_label_budget, stratified_group_split
from .manifest import SPLITS, Manifest, ManifestError
from .severity import BUSI_SEVERITY, HAM10000_SEVERITY, SEVERITY_ORDERS, SeverityOrder, get_severity_order
from .streams import (
    LABELED_SAMPLING,
    ClassBalancedBatchSampler,
    IterationBatchSampler,
    SeededTransformDataset,
    SemiSupervisedLoader,
    dataset_labels,
)

__all__ = [
    "BUSI_SEVERITY",
    "HAM10000_SEVERITY",
    "IMAGE_SUFFIXES",
    "LABELED_SAMPLING",
    "SEVERITY_ORDERS",
    "SPLITS",
    "ClassBalancedBatchSampler",
    "IterationBatchSampler",
    "LabelBudgetError",
    "LabelSplit",
    "Manifest",
    "ManifestError",
    "SeededTransformDataset",
    "SemiSupervisedLoader",
    "SeverityOrder",
    "dataset_labels",
    "expand_frames",
    "get_severity_order",
    "list_inputs",
    "load_manifest",
    "resolve_budget",
    "split_label_budget",
    "stratified_group_split",
]
