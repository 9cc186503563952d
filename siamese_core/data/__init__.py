"""Data: sources (`sources`, `image_folder`), splits, the one pair/triplet sampler (`pairs`) and the loaders."""
