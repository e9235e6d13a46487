"""Training data made here from real sources: recorded LibriVox clips and speech synthesizers."""
