"""Deployment artefacts built from a checkpoint and data: INT8 models."""
