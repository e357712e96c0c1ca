"""Programs around the node: the demo, the synthetic camera, the evaluator, the soak test, launch helpers."""
