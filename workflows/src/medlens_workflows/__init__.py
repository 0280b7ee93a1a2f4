"""MedLens workflows: evaluation, validation and tracking jobs built on the host."""
