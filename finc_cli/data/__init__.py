"""Datasets on disk, prepared caches, training batches and their prefetching, augmentation, dequantization."""

from finc_cli.data.batches import StepBatch, batch_indices, fetch, step_batch
from finc_cli.data.cache import MappedImages, prepare
from finc_cli.data.datasets import DATASETS, SPLITS, dataset_info, get_dataset
from finc_cli.data.prefetch import Prefetcher
from finc_cli.data.preprocess import LogitPreprocess, dequantize, quantize

__all__ = [
    "DATASETS",
    "SPLITS",
    "LogitPreprocess",
    "MappedImages",
    "Prefetcher",
    "StepBatch",
    "batch_indices",
    "dataset_info",
    "dequantize",
    "fetch",
    "get_dataset",
    "prepare",
    "quantize",
    "step_batch",
]
