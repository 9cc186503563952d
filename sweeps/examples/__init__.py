"""Small examples referenced by the shipped specs."""
