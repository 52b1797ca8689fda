"""Logging, router training, baselines, export and distillation (lightning, mlflow and datasets live here)."""
