"""Model pieces: distances, layers, encoders, and the Siamese assembly."""
