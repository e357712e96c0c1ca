"""Messages and the ROS graph: image encodings, CDR bytes, message helpers, topic names, QoS, node processes."""
