"""Training from labelled polygons, honest validation, safe model artifacts and prediction."""
