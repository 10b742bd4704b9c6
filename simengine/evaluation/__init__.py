"""Evaluation: retrieval metrics, thresholds, and the decision rules with their calibration."""
