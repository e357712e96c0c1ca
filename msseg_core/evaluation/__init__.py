"""Scoring a Segmenter on a labelled split: confusion matrices, evaluation, temperature scaling."""
