"""Evaluation (paper §4): datasets, methods, image metrics, the resumable runner and its reports."""
