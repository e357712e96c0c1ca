"""msseg-bag: rosbag2 files for evaluation and replay, without rosbag2_py (not installable from PyPI).

One module per subcommand (`cli` parses the command line and dispatches):

  make         a labelled dataset split -> rosbag2 (camera images, CameraInfo, ground-truth labels)
  evaluate     `eval`: every image in a bag through `Segmenter`, scored against the bag's labels, offline
  play         publish a bag into the ROS graph (recorded timing x rate, or lock-step with the node)
  record       subscribe to topics and write them to a rosbag2 (the msg types msseg uses, and any
               other whose Python message package is importable)
  replay       `replay-eval`: the segmentation node (subprocess) + player + live evaluator, one command
  info         topics, types, counts and time range of a bag (`ros2 bag info` is not installable);
               also what every subcommand reads a bag with
  frames       images to label from a bag: spaced in time or frames, near-duplicates skipped, a manifest,
               optionally the current model's masks as pre-labels (your own data: docs/own_data.md)

Bags are written with the `rosbags` library through the ROS 2 Jazzy typestore, so message
definitions and RIHS01 type hashes in the metadata are the real ones and `ros2 bag info/play` open
them. Messages are moved as raw CDR wherever possible (play publishes the bytes, record writes the
bytes) so large images cost no (de)serialisation in Python.
"""
