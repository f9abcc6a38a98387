"""The engine: physics, data, network, training, refinement, inference. Imports neither ptychodus nor Qt."""
