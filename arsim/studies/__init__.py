"""Numerical studies that reproduce published results outside the Brian2 model (numpy only)."""
