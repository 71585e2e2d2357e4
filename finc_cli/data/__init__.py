"""Datasets on disk and their labels, prepared caches, training batches and their prefetching, augmentation."""

from finc_cli.data.batches import StepBatch, batch_indices, fetch, step_batch
from finc_cli.data.cache import MappedImages, prepare
from finc_cli.data.datasets import DATASETS, SPLITS, dataset_info, read_labels
from finc_cli.data.labels import LabelledDataset, Labels
from finc_cli.data.load import get_dataset, get_labelled_dataset, get_labels
from finc_cli.data.prefetch import Prefetcher

__all__ = [
    "DATASETS",
    "SPLITS",
    "LabelledDataset",
    "Labels",
    "MappedImages",
    "Prefetcher",
    "StepBatch",
    "batch_indices",
    "dataset_info",
    "fetch",
    "get_dataset",
    "get_labelled_dataset",
    "get_labels",
    "prepare",
    "read_labels",
    "step_batch",
]
