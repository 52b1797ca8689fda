"""Speculative-cascade decoding with any deferral rule, and its evaluation.

Importing this package pulls in torch and transformers only: an exported router runs without
lightning, mlflow or datasets.
"""
