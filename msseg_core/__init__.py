"""msseg_core: networks, data, training, evaluation and inference for driving-scene segmentation.

Nothing in this package imports ROS; the ROS node in `msseg_ros` is a thin layer on `inference.Segmenter`.
"""

__version__ = "0.1.0"
