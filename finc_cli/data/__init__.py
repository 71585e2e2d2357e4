"""Datasets on disk, training batches, augmentation, and the dequantizing preprocessing flow."""

from finc_cli.data.batches import batch_indices, fetch
from finc_cli.data.datasets import DATASETS, SPLITS, dataset_info, get_dataset
from finc_cli.data.preprocess import LogitPreprocess, dequantize, quantize

__all__ = [
    "DATASETS",
    "SPLITS",
    "LogitPreprocess",
    "batch_indices",
    "dataset_info",
    "dequantize",
    "fetch",
    "get_dataset",
    "quantize",
]
