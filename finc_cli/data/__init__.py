"""Datasets on disk and the dequantizing preprocessing flow."""
