"""The router: a small network scoring "deferral needed" from the feature vector, and its export format.

An export folder holds
- router.safetensors: the weights, including the normalisation statistics (buffers `mean`, `std`);
- router.json: everything needed to use the weights safely: the RouterConfig, the feature spec, the
  normalisation statistics (readable copy), the identity of the pair the data was logged on, the
  label and objective, the calibration table (score threshold per deferral rate), metrics and the
  library versions.
Loading needs torch and safetensors only (no lightning, mlflow or datasets).
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from deferral.errors import DeferralError

EXPORT_FORMAT = "deferral-router"
EXPORT_FORMAT_VERSION = 1
WEIGHTS_FILE = "router.safetensors"
META_FILE = "router.json"
OBJECTIVES = ("classify", "regress")


@dataclass
class RouterConfig:
    """Architecture of the router network.

    num_features: F, the width of the feature vector (deferral.features.FeatureSpec.dim).
    hidden: width of the hidden layers.
    layers: number of hidden blocks (0 = a linear model over normalised features).
    residual: pre-norm residual blocks (x + W2·GELU(W1·LN(x))) instead of a plain MLP.
    dropout: dropout inside each block during training.
    objective: "classify" (output is a logit; score = sigmoid) or "regress" (output is the predicted
        drafter-minus-target loss gap; score = output).
    """

    num_features: int
    hidden: int = 128
    layers: int = 2
    residual: bool = True
    dropout: float = 0.0
    objective: str = "classify"

    def __post_init__(self) -> None:
        if self.num_features < 1:
            raise DeferralError(f"the router needs at least one input feature, got num_features={self.num_features}")
        if self.objective not in OBJECTIVES:
            raise DeferralError(f"unknown router objective '{self.objective}': choose one of {', '.join(OBJECTIVES)}")
        if self.hidden < 1 or self.layers < 0:
            raise DeferralError(f"router hidden={self.hidden}, layers={self.layers}: need hidden >= 1, layers >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> "RouterConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.drop(self.down(nn.functional.gelu(self.up(self.norm(h)))))


class Router(nn.Module):
    """Feature vector (raw, un-normalised) -> one number per row.

    The normalisation (x - mean) / std happens inside, with statistics of the training split stored
    as buffers, so the same raw features from `compute_features` go in at training and inference.
    """

    def __init__(self, config: RouterConfig):
        super().__init__()
        self.config = config
        f, h = config.num_features, config.hidden
        self.register_buffer("mean", torch.zeros(f))
        self.register_buffer("std", torch.ones(f))
        if config.layers == 0:
            self.body = nn.Identity()
            self.head = nn.Linear(f, 1)
        elif config.residual:
            self.body = nn.Sequential(
                nn.Linear(f, h), *[_ResidualBlock(h, config.dropout) for _ in range(config.layers)], nn.LayerNorm(h)
            )
            self.head = nn.Linear(h, 1)
        else:
            blocks: list[nn.Module] = []
            width = f
            for _ in range(config.layers):
                blocks += [nn.Linear(width, h), nn.GELU(), nn.Dropout(config.dropout)]
                width = h
            self.body = nn.Sequential(*blocks)
            self.head = nn.Linear(h, 1)

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store training-split statistics; std is floored so constant features stay finite."""
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, F) raw features -> (N,) logit (classify) or predicted loss gap (regress)."""
        z = (x.float() - self.mean) / self.std
        return self.head(self.body(z)).squeeze(-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) -> (N,) the deferral score the learned rule thresholds: higher = defer."""
        out = self.forward(x)
        return torch.sigmoid(out) if self.config.objective == "classify" else out


def library_versions() -> dict:
    import safetensors

    import deferral

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "deferral": deferral.__version__,
    }


def save_router(folder: str | Path, router: Router, meta: dict) -> Path:
    """Write router.safetensors + router.json into `folder` (created); return the folder.

    `meta` carries the keys described in the module docstring (feature_spec, pair, label, objective,
    calibration, ...); the config, normalisation statistics and versions are added here.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": EXPORT_FORMAT})
    record = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "config": asdict(router.config),
        **meta,
        "normalisation": {"mean": router.mean.tolist(), "std": router.std.tolist()},
        "library_versions": {**meta.get("library_versions", {}), **library_versions()},
    }
    (folder / META_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def read_router_meta(folder: str | Path) -> dict:
    """router.json of an export folder, checked for format; DeferralError names the fix."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not folder.is_dir():
        raise DeferralError(f"router folder {folder} does not exist: pass a folder written by `deferral export`")
    if not meta_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise DeferralError(
            f"{folder} is not a router export (needs {WEIGHTS_FILE} and {META_FILE}): run `deferral export`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DeferralError(f"{meta_path} is not valid JSON ({exc.msg}): re-export the router") from None
    if not isinstance(meta, dict):
        raise DeferralError(f"{meta_path} holds a JSON {type(meta).__name__}, not an object: re-export the router")
    version = meta.get("format_version", -1)
    if meta.get("format") != EXPORT_FORMAT or not _is_number(version) or version > EXPORT_FORMAT_VERSION:
        raise DeferralError(
            f"{meta_path} has format {meta.get('format')} v{meta.get('format_version')}, this version reads "
            f"{EXPORT_FORMAT} v{EXPORT_FORMAT_VERSION}: re-export the router or upgrade deferral"
        )
    problem = _shape_problem(meta)
    if problem:
        raise DeferralError(f"{meta_path} is malformed ({problem}): re-export the router with `deferral export`")
    return meta


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shape_problem(meta: dict) -> str | None:
    """What makes a (hand-edited or foreign) router.json unusable: missing objects, text where numbers belong."""
    config = meta.get("config")
    if not isinstance(config, dict) or "num_features" not in config:
        return "no 'config' object with num_features"
    for key in ("num_features", "hidden", "layers", "dropout"):
        if key in config and not _is_number(config[key]):
            return f"config.{key} is {config[key]!r}, not a number"
    for key in ("alpha", "default_threshold", "default_deferral_rate", "candidates", "logged_candidates"):
        if meta.get(key) is not None and not _is_number(meta[key]):
            return f"{key} is {meta[key]!r}, not a number"
    for key in ("feature_spec", "pair", "calibration"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            return f"'{key}' is not an object"
    spec = meta.get("feature_spec") or {}
    for key in ("version", "drafter_hidden", "target_hidden"):
        if key in spec and not _is_number(spec[key]):
            return f"feature_spec.{key} is {spec[key]!r}, not a number"
    rows = (meta.get("calibration") or {}).get("rows") or []
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and _is_number(r.get("deferral_rate")) and _is_number(r.get("threshold")) for r in rows
    ):
        return "calibration rows need numeric deferral_rate and threshold"
    return None


def load_router(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Router, dict]:
    """Load an export folder -> (Router in eval mode, router.json contents)."""
    from safetensors.torch import load_file

    meta = read_router_meta(folder)
    router = Router(RouterConfig.from_dict(meta["config"]))
    try:
        state = load_file(str(Path(folder) / WEIGHTS_FILE), device="cpu")
    except Exception as exc:  # safetensors raises SafetensorError for cut or foreign files
        raise DeferralError(
            f"{folder}/{WEIGHTS_FILE} is truncated or not a safetensors file ({str(exc).splitlines()[0]}): re-export"
        ) from None
    try:
        router.load_state_dict(state)
    except RuntimeError as exc:
        raise DeferralError(
            f"{folder}/{WEIGHTS_FILE} does not match its {META_FILE} ({str(exc).splitlines()[0]}): re-export"
        ) from None
    return router.to(device).eval(), meta
