"""Inference: the Segmenter (preprocess -> network -> postprocess), its engines and files."""
