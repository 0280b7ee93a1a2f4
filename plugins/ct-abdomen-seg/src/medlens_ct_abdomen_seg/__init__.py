"""MedLens plugin: CT abdomen organ and liver-tumour segmentation (demo weights)."""
