"""Rule library for speculative cascades: pair loading, per-token features, deferral rules, router.

Depends on torch and numpy only (transformers is imported lazily by the loaders), so an exported
router runs without lightning, mlflow or datasets.
"""

from deferral.errors import DeferralError

__all__ = ["DeferralError"]
__version__ = "0.1.0"
