"""Datasets on disk, prepared caches, training batches and their prefetching, augmentation."""

from finc_cli.data.batches import StepBatch, batch_indices, fetch, step_batch
from finc_cli.data.cache import MappedImages, prepare
from finc_cli.data.datasets import DATASETS, SPLITS, dataset_info
from finc_cli.data.load import get_dataset
from finc_cli.data.prefetch import Prefetcher

__all__ = [
    "DATASETS",
    "SPLITS",
    "MappedImages",
    "Prefetcher",
    "StepBatch",
    "batch_indices",
    "dataset_info",
    "fetch",
    "get_dataset",
    "prepare",
    "step_batch",
]
