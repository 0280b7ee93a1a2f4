"""Explanations: Grad-CAM heatmaps on the input grid, with a randomisation sanity check."""
