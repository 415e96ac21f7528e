"""Diagnosing a model file or bundle that will not load."""
