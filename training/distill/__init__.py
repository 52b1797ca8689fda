"""Drafter distillation workflow: `deferral distill` and its stages."""
