"""A run's results: the metrics it recorded, its assertions judged, and the report, plots and
comparisons written from them."""
