"""Inference engine: device choice, pre/post-processing, sliding window, model formats.

Importing this package is light; torch and MONAI load inside the functions.
"""
