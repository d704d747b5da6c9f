"""Dataset readers: class folders (dir or zip), CSV/JSONL manifests, WebDataset shards; splits, K-shot."""

from .dataset import (
    IMAGE_EXTENSIONS,
    DatasetListing,
    DatasetReport,
    LabeledImageDataset,
    Sample,
    check_image,
    open_image,
)
from .fewshot import apply_split, few_shot, split_paths, split_samples
from .folder import read_image_folder
from .manifest import read_manifest
from .transforms import train_transform
from .webdataset import WebDatasetShards, iter_webdataset, scan_webdataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetListing",
    "DatasetReport",
    "LabeledImageDataset",
    "Sample",
    "WebDatasetShards",
    "apply_split",
    "check_image",
    "few_shot",
    "iter_webdataset",
    "open_image",
    "read_image_folder",
    "read_manifest",
    "scan_webdataset",
    "split_paths",
    "split_samples",
    "train_transform",
]
