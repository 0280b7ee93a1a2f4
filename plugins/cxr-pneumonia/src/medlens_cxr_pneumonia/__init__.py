"""MedLens first-party plugin: pneumonia on frontal chest radiographs."""
