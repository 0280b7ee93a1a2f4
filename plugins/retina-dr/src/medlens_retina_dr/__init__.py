"""MedLens first-party plugin ``retina-dr``: referable diabetic retinopathy screening."""
