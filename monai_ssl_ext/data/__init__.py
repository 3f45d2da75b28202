"""Manifests, label budgets, data set builders and the iteration-indexed training streams."""

from .datalist import add_mask_rules, expand_frames, load_manifest
from .inputs import IMAGE_SUFFIXES, InferenceInputs, SkippedInput, input_root, list_inputs, scan_inputs
from .label_budget import LabelBudgetError, LabelSplit, resolve_budget, split_label_budget, stratified_group_split
from .manifest import SPLITS, Manifest, ManifestError
from .severity import BUSI_SEVERITY, HAM10000_SEVERITY, SEVERITY_ORDERS, SeverityOrder, get_severity_order
from .streams import (
    LABELED_SAMPLING,
    ClassBalancedBatchSampler,
    IterationBatchSampler,
    SeededTransformDataset,
    SemiSupervisedLoader,
    StratifiedBatchSampler,
    SwitchingBatchSampler,
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
    "InferenceInputs",
    "IterationBatchSampler",
    "LabelBudgetError",
    "LabelSplit",
    "Manifest",
    "ManifestError",
    "SeededTransformDataset",
    "SemiSupervisedLoader",
    "SeverityOrder",
    "SkippedInput",
    "StratifiedBatchSampler",
    "SwitchingBatchSampler",
    "add_mask_rules",
    "dataset_labels",
    "expand_frames",
    "get_severity_order",
    "input_root",
    "list_inputs",
    "load_manifest",
    "resolve_budget",
    "scan_inputs",
    "split_label_budget",
    "stratified_group_split",
]
