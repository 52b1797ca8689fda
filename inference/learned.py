"""Build the `learned` deferral rule from a router export folder, refusing one made for another pair."""

from __future__ import annotations

import sys

import torch

from deferral.errors import DeferralError
from deferral.features import FeatureSpec
from deferral.router import Router, load_router, read_router_meta
from deferral.rules import DEFAULT_CANDIDATES, Learned

DECODE_CALIBRATION_KEY = "decode_calibration"  # router.json: thresholds measured while decoding
RATE_SLACK = 0.02  # a rate this close outside the measured ones still reads the decode table (ends held)


def pair_mismatch(trained: dict, loaded: dict) -> str | None:
    """How the loaded pair's identity differs from the one a router was trained on, or None.

    Both arguments are Pair.identity() dicts. The router's features describe both models'
    distributions over one tokenizer, so the tokenizer, each model's weights/config and the shared
    vocabulary size must agree: a router learned on one drafter's mistakes says little about another's.
    """
    if trained.get("vocab_size") != loaded.get("vocab_size"):
        return f"shared vocabulary {trained.get('vocab_size')} != {loaded.get('vocab_size')}"
    for role in ("target", "drafter"):
        old, new = trained.get(role, {}), loaded.get(role, {})
        if old.get("tokenizer_sha256") != new.get("tokenizer_sha256"):
            return f"the {role}'s tokenizer differs"
        if old.get("config_sha256") != new.get("config_sha256"):
            return f"the {role} model's config differs"
        if old.get("sha256") and new.get("sha256") and old["sha256"] != new["sha256"]:
            return f"the {role} model's weights differ"
    return None


def router_decision(meta: dict) -> str:
    """How the router's score becomes a decision (router.json `decision`; see rules.Learned)."""
    return str(meta.get("decision", "score"))


def neutral_threshold(objective: str | None) -> float:
    """The threshold that means "no preference" for an objective: probability 0.5 for a classifier,
    a gain (or harm) of 0 for a regressor."""
    return 0.5 if objective == "classify" else 0.0


def default_threshold(meta: dict) -> float:
    """The export's own threshold (set by `deferral export` from its calibration), else the neutral one."""
    return float(meta.get("default_threshold", neutral_threshold(meta.get("objective"))))


def export_default_threshold(router_dir: str) -> float:
    """The default threshold stored in a router export folder."""
    return default_threshold(read_router_meta(router_dir))


def resolve_threshold(meta: dict, threshold: float | None, deferral_rate: float | None, alpha: float) -> float:
    """The score threshold: given directly, read off a calibration table for a deferral rate, or
    the export's default. A table measured while decoding (`deferral calibrate`) is preferred to
    the one over logged positions wherever it covers the rate. Tables made under another decision
    than the router's are not read."""
    from deferral.calibration import decoded_rate_range, threshold_for_decoded_rate, threshold_for_rate

    if threshold is not None and deferral_rate is not None:
        raise DeferralError("give either --threshold or --deferral-rate, not both")
    if threshold is not None:
        return float(threshold)
    decision = router_decision(meta)
    table = meta.get("calibration") if decision == "score" else None  # logged positions, plain scores
    decoded = meta.get(DECODE_CALIBRATION_KEY)
    if decoded and decoded.get("decision", "score") != decision:
        decoded = None
    if deferral_rate is not None and decision != "score" and not (table or decoded):
        raise DeferralError(f"the router has no calibration table for its '{decision}' decision: give a threshold "
                            "instead of a deferral rate, or measure one with `deferral calibrate --router DIR`")
    if deferral_rate is not None:
        for t in (table, decoded):
            if t and abs(float(t.get("alpha", 0.0)) - alpha) > 1e-12:
                raise DeferralError(
                    f"the router's calibration table was built at alpha={t.get('alpha')}, not {alpha}: "
                    "drop --alpha or pass --threshold instead of --deferral-rate"
                )
        if decoded:
            low, high = decoded_rate_range(decoded)
            if low - RATE_SLACK <= deferral_rate <= high + RATE_SLACK:
                return threshold_for_decoded_rate(decoded, deferral_rate)
            if not table:
                raise DeferralError(f"deferral rate {deferral_rate} lies outside the rates measured while decoding "
                                    f"({low:.2f}-{high:.2f}): ask for one inside, or rerun `deferral calibrate` "
                                    "with it in --rates")
            print(f"warning: --deferral-rate {deferral_rate} lies outside the rates measured while decoding "
                  f"({low:.2f}-{high:.2f}, `deferral calibrate`): the threshold comes from the logged positions, "
                  "whose rates decoding does not keep", file=sys.stderr)
        return threshold_for_rate(table, deferral_rate)
    return default_threshold(meta)


def logged_candidates(meta: dict) -> int:
    """How many of the drafter's top tokens the learned rule scores per position.

    The router only knows candidates that its training log described: a log of drafted tokens
    (the drafter's argmax at greedy logging) describes one candidate per position, so a router asking
    for more (whose extra candidates would get feature values never seen in training) is capped there.
    """
    wanted = int(meta.get("candidates", DEFAULT_CANDIDATES))
    return max(1, min(wanted, int(meta.get("logged_candidates", 1))))


def make_scorer(router: Router):
    """Wrap the router as the rule's scorer: (M, F) raw features -> (M,) scores, no autograd."""

    def scorer(features: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return router.score(features)

    return scorer


def check_router_meta(router_dir: str, meta: dict, pair_identity: dict) -> FeatureSpec:
    """The router's feature layout, after checking that its router.json fits this pair and version.

    Raises DeferralError when the router was trained for another pair or another feature layout.
    """
    problem = pair_mismatch(meta.get("pair", {}), pair_identity)
    if problem:
        trained_pair = meta.get("pair", {})
        source = " -> ".join(trained_pair.get(r, {}).get("source", "?") for r in ("drafter", "target"))
        raise DeferralError(
            f"router {router_dir} was trained for another pair ({problem}; trained with '{source}'): "
            "use the drafter and target it was trained with, or log this pair and train a router for it"
        )
    try:
        spec = FeatureSpec.check_stored(meta.get("feature_spec"))
    except DeferralError as exc:
        raise DeferralError(f"router {router_dir} uses other features than this version computes ({exc})") from None
    if int(meta["config"]["num_features"]) != spec.dim:
        raise DeferralError(
            f"router {router_dir} takes {meta['config']['num_features']} features but its feature list has "
            f"{spec.dim}: re-export the router"
        )
    return spec


def check_router(router_dir: str, pair) -> FeatureSpec:
    """Check an export folder against `pair` without loading its weights (before any decoding)."""
    return check_router_meta(router_dir, read_router_meta(router_dir), pair.identity())


def load_learned_rule(
    router_dir: str,
    pair,
    threshold: float | None = None,
    deferral_rate: float | None = None,
    alpha: float | None = None,
) -> Learned:
    """The learned rule for `pair` from an export folder (see `deferral export`).

    Raises DeferralError when the router was trained for another pair or another feature layout,
    or when the threshold request cannot be met.
    """
    router, meta = load_router(router_dir, device=pair.device)
    spec = check_router_meta(router_dir, meta, pair.identity())
    alpha = float(meta.get("alpha", 0.0) if alpha is None else alpha)
    chosen = resolve_threshold(meta, threshold, deferral_rate, alpha)
    return Learned(
        make_scorer(router),
        threshold=chosen,
        alpha=alpha,
        candidates=logged_candidates(meta),
        feature_spec=spec,
        decision=str(meta.get("decision", "score")),
    )
