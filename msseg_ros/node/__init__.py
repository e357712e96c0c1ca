"""The segmentation node: parameters, cameras, the frame pipeline, health, the road grid."""
