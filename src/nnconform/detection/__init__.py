"""Embedded detection data and the embedded detector (issue 14): Fashion-MNIST mosaics, a tiny FPN detector."""

from .data import (MOSAIC_DATASET, DetectionDataset, GroundTruth, load_mosaic_dataset, make_mosaics)

__all__ = ["MOSAIC_DATASET", "DetectionDataset", "GroundTruth", "load_mosaic_dataset", "make_mosaics"]
