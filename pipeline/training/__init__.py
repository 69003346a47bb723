"""Fitting models: the training loop's parts, the multi-task trainer, and fits that resume."""
