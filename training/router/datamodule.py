"""Logged positions as in-memory tensors, split by document, for router training.

Splits are by document (doc_id), never by row: neighbouring positions of one document are strongly
correlated, so a row split would leak. Normalisation statistics come from the training split only.
Batches are slices of whole tensors (one fancy-index per batch, no per-row __getitem__), which
keeps a million positions per epoch cheap on two cores.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler, TensorDataset

from deferral.errors import DeferralError
from deferral.features import FeatureSpec
from deferral.labels import LABEL_COLUMNS, ROUTER_TARGETS
from training.logs.blocks import examined_positions
from training.logs.mixed_corpus import SOURCE_NAMES, mixed_document_sources
from training.logs.logged_data import ID_COLUMNS, check_feature_spec, load_logged, read_meta

SPLITS = ("train", "val", "test")
# The document split when nothing else is given (the datamodule's and `deferral baselines`' defaults).
DEFAULT_VAL_FRACTION, DEFAULT_TEST_FRACTION, DEFAULT_SPLIT_SEED = 0.1, 0.1, 0
DEFAULT_TARGET = "gap01"  # the router's label unless data.target says otherwise (configs/router.yaml agrees)
FEATURE_CHOICES = ("all", "no-hidden")


def describe_target(target: str) -> str:
    t = ROUTER_TARGETS[target]
    return f"{target}: {t.description} (from {t.column})"


def check_target(target: str) -> None:
    if target not in ROUTER_TARGETS:
        raise DeferralError(f"unknown router target '{target}': choose one of {', '.join(ROUTER_TARGETS)}")


def check_fractions(val_fraction: float, test_fraction: float,
                    flags: tuple[str, str] = ("data.val_fraction", "data.test_fraction")) -> None:
    """Held-out shares of the documents: each in (0, 1), together below 1 (training keeps the rest)."""
    for flag, value in zip(flags, (val_fraction, test_fraction)):
        if not 0 < value < 1:
            raise DeferralError(f"{flag} must lie in (0, 1) (a share of the documents), got {value}: e.g. 0.1")
    if val_fraction + test_fraction >= 1:
        raise DeferralError(
            f"{flags[0]} + {flags[1]} = {val_fraction + test_fraction:g} leaves no training documents: "
            "keep their sum below 1"
        )


def warn_if_incomplete(path) -> None:
    """One warning line when a log's `deferral log` run never finished (killed or still running)."""
    from pathlib import Path

    if not (Path(path) / "progress.json").is_file():
        print(f"warning: {path} is an unfinished log (its `deferral log` run was interrupted or is still running): "
              "training on the shards written so far; rerun the same `deferral log` command to finish it", file=sys.stderr)


def split_documents(doc_ids: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Assign every row to train/val/test by its document -> {split: (N,) bool mask}.

    Documents are shuffled with `seed`; val and test each get at least one document when there
    are three or more.
    """
    docs = np.unique(doc_ids)
    if docs.size < 3:
        raise DeferralError(
            f"the logged data holds {docs.size} document(s); train/val/test splits by document need at least 3: log more"
        )
    rng = np.random.default_rng(seed)
    docs = rng.permutation(docs)
    n_val = max(1, int(round(val_fraction * docs.size)))
    n_test = max(1, int(round(test_fraction * docs.size)))
    if n_val + n_test >= docs.size:
        n_val = n_test = 1
    groups = {"val": docs[:n_val], "test": docs[n_val : n_val + n_test], "train": docs[n_val + n_test :]}
    return {name: np.isin(doc_ids, group) for name, group in groups.items()}


@dataclass
class LoggedArrays:
    """Columns of a logged dataset as numpy arrays (features (N, F) float32, the rest (N,))."""

    features: np.ndarray
    columns: dict[str, np.ndarray]
    meta: dict

    def __len__(self) -> int:
        return self.features.shape[0]


def read_arrays(path: str, limit_rows: int | None = None) -> LoggedArrays:
    """Load a logged dataset into memory straight from its Arrow columns (no per-row conversion)."""
    ds, meta = load_logged(path)
    if len(ds) == 0:
        raise DeferralError(f"{path} holds no logged positions: run `deferral log` to completion (or on more text)")
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    if limit_rows:
        table = table.slice(0, limit_rows)
    dim = FeatureSpec.from_dict(meta["feature_spec"]).dim
    flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    features = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, dim)
    columns = {n: table.column(n).to_numpy() for n in [*ID_COLUMNS, *LABEL_COLUMNS] if n in table.column_names}
    return LoggedArrays(features=features, columns=columns, meta=meta)


def target_values(arrays: LoggedArrays, target: str) -> np.ndarray:
    """(N,) float32 values of `target`'s column, oriented so that higher = deferral more needed."""
    t = ROUTER_TARGETS[target]
    values = arrays.columns.get(t.column)
    if values is None or (t.consequence and np.isnan(values.astype(np.float32)).all()):
        raise DeferralError(
            f"router target '{target}' needs consequence labels, which this log lacks: log with `deferral log --mode cascade`"
        )
    return t.harm(values.astype(np.float32))


def binary_target(arrays: LoggedArrays, target: str) -> np.ndarray:
    """(N,) float32 1 where deferral is needed under `target`."""
    return ROUTER_TARGETS[target].needed(target_values(arrays, target)).astype(np.float32)


def regression_target(arrays: LoggedArrays, target: str) -> np.ndarray:
    """(N,) float32 value to regress: a loss gap or a consequence (harm) label."""
    if not ROUTER_TARGETS[target].regressable:
        raise DeferralError(
            f"objective 'regress' needs a loss-gap or consequence target "
            f"({', '.join(n for n, t in ROUTER_TARGETS.items() if t.regressable)}), not '{target}'"
        )
    return target_values(arrays, target)


def calibration_rows(arrays: LoggedArrays) -> np.ndarray:
    """(N,) bool: rows the calibration table counts (examined_positions for cascade logs, else all)."""
    meta = arrays.meta or {}
    cols = arrays.columns
    if meta.get("mode") != "cascade" or "position" not in cols:
        return np.ones(len(arrays), dtype=bool)
    block = int((meta.get("log_config") or {}).get("draft_tokens", 5))
    # decoding keeps a draft iff it is the target's choice (token_id: the target's argmax in these logs)
    mismatch = cols["drafted_id"] != cols["token_id"] if "drafted_id" in cols else cols["label_mismatch"] > 0
    return examined_positions(cols["doc_id"], cols["position"], mismatch, block)


def split_tensors(arrays: LoggedArrays, mask: np.ndarray, target: str) -> TensorDataset:
    """Tensors of one split: features (N, F), y_bin (N,), y_reg (N,), tv (N,), gap01 (N,), gap_nll (N,),
    and calibrated (N,): 1 where the calibration table counts the row (see calibration_rows).

    Rows without a value for the target (NaN: e.g. `ref_harm` on chat replies, which have no
    reference text) are left out.
    """
    y_reg = target_values(arrays, target)
    mask = mask & ~np.isnan(y_reg)
    parts = [
        arrays.features[mask],
        binary_target(arrays, target)[mask],
        y_reg[mask],
        arrays.columns["tv"][mask].astype(np.float32),
        arrays.columns["label_gap01"][mask].astype(np.float32),
        arrays.columns["label_gap_nll"][mask].astype(np.float32),
        calibration_rows(arrays)[mask].astype(np.float32),
    ]
    return TensorDataset(*(torch.from_numpy(np.ascontiguousarray(p)) for p in parts))


class EpochShuffle(Sampler):
    """Batches (lists of row indices) of a random order that depends on the epoch alone.

    Epoch e is shuffled with a generator seeded with `seed` + e (the trainer calls `set_epoch` before
    every epoch), not with one generator advanced from epoch 0: a run resumed at epoch e from a
    checkpoint sees the batches the uninterrupted run saw.
    """

    def __init__(self, rows: int, batch_size: int, seed: int):
        self.rows, self.batch_size, self.seed, self.epoch = rows, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.rows, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        for start in range(0, self.rows, self.batch_size):
            yield order[start : start + self.batch_size]


class FeatureDataModule(L.LightningDataModule):
    """A `deferral log` output folder, split by document into train/val/test tensors.

    Args:
        path: the logged dataset folder (`deferral log --out PATH`).
        target: what "deferral needed" means: gap01, gap_nll, mismatch or reject (see deferral.labels.ROUTER_TARGETS).
        batch_size: training rows per step (large batches: the router is tiny).
        eval_batch_size: rows per validation/test step.
        val_fraction, test_fraction: shares of documents held out.
        split_seed: seed of the document shuffle that decides the splits.
        limit_rows: use only the first N logged rows (quick experiments).
        features: "all" logged features, or "no-hidden": drop the logged hidden states (the router then
            needs neither model's hidden state at decode time).
        sources: for a log of the mixed corpus, train, validate and test on the documents of these sources
            only (stdlib, stdlib-docs, instructions), e.g. [stdlib] for a router that never saw prose.
    """

    def __init__(
        self,
        path: str = "logs/stdlib",
        target: str = DEFAULT_TARGET,
        batch_size: int = 8192,
        eval_batch_size: int = 65536,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        test_fraction: float = DEFAULT_TEST_FRACTION,
        split_seed: int = DEFAULT_SPLIT_SEED,
        limit_rows: int | None = None,
        features: str = "all",
        sources: list[str] | None = None,
    ):
        super().__init__()
        check_target(target)
        unknown = sorted(set(sources or ()) - set(SOURCE_NAMES))
        if unknown or sources == []:
            raise DeferralError(
                f"data.sources {sources} names no source of the mixed corpus: choose from {', '.join(SOURCE_NAMES)}"
            )
        self.sources = list(sources) if sources else None
        if batch_size < 1 or eval_batch_size < 1:
            raise DeferralError(
                f"--data.batch_size {batch_size}, --data.eval_batch_size {eval_batch_size}: pass sizes of at least 1"
            )
        if features not in FEATURE_CHOICES:
            raise DeferralError(f"data.features {features} is unknown: choose one of {', '.join(FEATURE_CHOICES)}")
        self.features = features
        self.save_hyperparameters()
        self.path, self.target = path, target
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.limit_rows = limit_rows
        check_fractions(val_fraction, test_fraction)
        self.arrays: LoggedArrays | None = None
        self.datasets: dict[str, TensorDataset] = {}
        self.meta: dict = {}
        self.mean = self.std = None
        self.pos_rate = 0.0

    @property
    def num_features(self) -> int:
        """Feature width read from the log's meta.json (linked into model.num_features)."""
        return self._spec(FeatureSpec.from_dict(read_meta(self.path)["feature_spec"])).dim

    def _spec(self, logged: FeatureSpec) -> FeatureSpec:
        """The layout the router sees: the logged one, or its prefix without hidden states."""
        if self.features == "no-hidden":
            return FeatureSpec(version=logged.version, lookahead=logged.lookahead)
        return logged

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            warn_if_incomplete(self.path)
            self.use_arrays(read_arrays(self.path, self.limit_rows))

    def use_arrays(self, arrays: LoggedArrays) -> None:
        """Split and tensorise already-loaded columns (setup() reads them from `path`)."""
        # the decode loop computes every layout this version names (hidden states, look-ahead): the
        # logged names must be exactly the ones it computes for the same options
        logged = FeatureSpec.check_stored(arrays.meta["feature_spec"])
        check_feature_spec(arrays.meta, logged)
        spec = self._spec(logged)
        if spec != logged:  # hidden states are the trailing columns: the reduced layout is a prefix
            arrays = LoggedArrays(
                features=np.ascontiguousarray(arrays.features[:, : spec.dim]), columns=arrays.columns,
                meta={**arrays.meta, "feature_spec": spec.to_dict()},
            )
        if self.sources:
            arrays = self._from_sources(arrays)
        masks = split_documents(arrays.columns["doc_id"], self.val_fraction, self.test_fraction, self.split_seed)
        self.arrays, self.meta = arrays, arrays.meta
        self.datasets = {name: split_tensors(arrays, masks[name], self.target) for name in SPLITS}
        train_x = self.datasets["train"].tensors[0]
        self.mean, self.std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        self.pos_rate = float(self.datasets["train"].tensors[1].mean())
        if self.pos_rate == 0.0:
            print(f"warning: no training position is positive under target '{self.target}' ({describe_target(self.target)}): "
                  "the router cannot learn when to defer; log more text or choose another --data.target", file=sys.stderr)
        self.split_sizes = {
            name: {"positions": int(masks[name].sum()), "documents": int(np.unique(arrays.columns["doc_id"][masks[name]]).size)}
            for name in SPLITS
        }

    def _from_sources(self, arrays: LoggedArrays) -> LoggedArrays:
        """The rows of documents from self.sources (a log of the mixed corpus)."""
        from training.logs.corpora import open_corpus

        source = mixed_document_sources(arrays.meta.get("corpus"), arrays.columns["doc_id"], open_corpus)
        keep = np.isin(source, self.sources)
        if not keep.any():
            raise DeferralError(f"no logged document comes from data.sources {self.sources}: log more documents of the mix")
        return LoggedArrays(features=arrays.features[keep], columns={k: v[keep] for k, v in arrays.columns.items()},
                            meta=arrays.meta)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.datasets[split]
        if shuffle:
            sampler = EpochShuffle(len(data), self.batch_size, self.split_seed)
            sampler.set_epoch(self.trainer.current_epoch if self.trainer else 0)
        else:
            sampler = BatchSampler(SequentialSampler(data), self.eval_batch_size, drop_last=False)
        # batch_size=None + a batch sampler: each step indexes the tensors once with a list of rows.
        return DataLoader(data, batch_size=None, sampler=sampler, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def description(self) -> dict:
        """What the router is trained on, for router.json and the card."""
        return {
            "path": str(self.path),
            "target": self.target,
            "target_definition": describe_target(self.target),
            "corpus": self.meta.get("corpus"),
            "sources": self.sources,
            "mode": self.meta.get("mode"),
            "splits": getattr(self, "split_sizes", None),
            "split_seed": self.split_seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "positive_rate_train": self.pos_rate,
        }
