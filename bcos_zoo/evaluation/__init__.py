"""Evaluation: accuracy and localisation (grid and energy pointing games) of B-cos models and post-hoc baselines."""
