"""Datasets: the synthetic scenes generator, downloads, and readers for the evaluation datasets."""
