"""MedLens validation: the judge. Metrics, statistics and protocol schema; never torch."""
