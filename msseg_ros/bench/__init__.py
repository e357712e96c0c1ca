"""Benchmarks of the node on a real DDS graph: one camera, several cameras, the transport floor."""
