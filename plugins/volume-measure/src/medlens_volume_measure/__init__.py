"""MedLens plugin: volume, lesion and diameter measurement of label masks."""
