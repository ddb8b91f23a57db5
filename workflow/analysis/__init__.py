"""Analyses of trained models: recorded activations and representational similarity."""
