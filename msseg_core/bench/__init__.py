"""Benchmarks: timing, reports, networks, the Segmenter, the accuracy/speed front."""
