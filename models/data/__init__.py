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
from .shards import ShardSpec, ShardStream, list_shards, write_shards
from .transforms import train_transform
from .webdataset import WebDatasetShards, iter_webdataset, scan_webdataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetListing",
    "DatasetReport",
    "LabeledImageDataset",
    "Sample",
    "ShardSpec",
    "ShardStream",
    "WebDatasetShards",
    "apply_split",
    "check_image",
    "few_shot",
    "iter_webdataset",
    "open_image",
    "read_image_folder",
    "read_manifest",
    "list_shards",
    "scan_webdataset",
    "split_paths",
    "split_samples",
    "train_transform",
    "write_shards",
]
