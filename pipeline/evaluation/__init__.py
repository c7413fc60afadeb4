"""Evaluation: metrics of in-painting and generation, the run's report and its figures."""
