"""Measuring models: every score and latency in one place, and models loaded as predictors."""
