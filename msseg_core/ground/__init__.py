"""The camera on the ground: the pinhole model, flat-ground projection, road-mask clean-up."""
