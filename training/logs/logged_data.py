"""The logged-dataset format: schema, atomic shard writing, and the one reader `load_logged`.

Layout of an output folder OUT:
    OUT/meta.json                          format, feature spec, pair, corpus, mode, label definitions
    OUT/run.json                           the arguments that decide the rows (checked on resume)
    OUT/progress.json                      written once complete: shard and position counts
    OUT/shards/rank-RRRRR/chunk-CCCCCC.arrow   one Arrow stream file per chunk of documents
    OUT/shards/rank-RRRRR/progress.json    updated after each shard of that rank (informational)
    OUT/state.json, OUT/dataset_info.json  written once the run is complete: `datasets.load_from_disk(OUT)`

Chunk c always holds the same documents, whichever rank wrote it, so reading every finished shard in
chunk order gives the same rows as a single uninterrupted process. A shard exists under its final name
only once it is fully written and fsynced (written to a temporary name, then renamed), so a killed run
never leaves a half-written shard that counts as finished.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from deferral.errors import DeferralError
from deferral.features import FeatureSpec
from deferral.labels import CONSEQUENCE_LABELS, LABEL_COLUMNS

FORMAT = "deferral-log"
FORMAT_VERSION = 1
ID_COLUMNS = ["doc_id", "position", "token_id", "drafted_id"]
COLUMNS = ID_COLUMNS + ["features"] + list(LABEL_COLUMNS)
SHARD_GLOB = "shards/rank-*/chunk-*.arrow"
_SHARD_NAME = re.compile(r"chunk-(\d+)\.arrow$")

_NUMPY_TYPES = {
    "doc_id": np.int64,
    "position": np.int32,
    "token_id": np.int32,
    "drafted_id": np.int32,
    **{name: np.dtype(c.dtype).type for name, c in LABEL_COLUMNS.items()},
}


def hf_features(feature_dim: int):
    """The explicit `datasets.Features` of a logged dataset with F = feature_dim features."""
    import datasets

    cols = {name: datasets.Value(np.dtype(t).name) for name, t in _NUMPY_TYPES.items()}
    cols["features"] = datasets.List(datasets.Value("float32"), length=feature_dim)
    return datasets.Features({name: cols[name] for name in COLUMNS})


def arrow_table(rows: dict, feature_dim: int) -> pa.Table:
    """Rows as numpy arrays ({column: (N,) array}, features (N, F) float32) -> a typed Arrow table."""
    n = len(rows["doc_id"])
    features = np.ascontiguousarray(rows["features"], dtype=np.float32).reshape(n, feature_dim)
    arrays = []
    for name in COLUMNS:
        if name == "features":
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), feature_dim))
        else:
            # consequence labels exist in cascade logs only: elsewhere they are NaN
            values = rows[name] if name in rows or name not in CONSEQUENCE_LABELS else np.full(n, np.nan)
            arrays.append(pa.array(np.asarray(values, dtype=_NUMPY_TYPES[name])))
    return pa.Table.from_arrays(arrays, schema=hf_features(feature_dim).arrow_schema)


def shard_path(out: Path, rank: int, chunk: int) -> Path:
    return Path(out) / "shards" / f"rank-{rank:05d}" / f"chunk-{chunk:06d}.arrow"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_error(path: Path, exc: OSError) -> DeferralError:
    if exc.errno == errno.ENOSPC:
        return DeferralError(f"the disk holding {path.parent} is full: free space (or choose another --out) and rerun to resume")
    return DeferralError(f"could not write {path}: {exc.strerror or exc}: check the --out folder and rerun to resume")


def write_atomic(path: Path, write) -> None:
    """Write a file through `write(file_object)` under a temporary name, fsync, then rename into place.

    The final name appears only once the bytes are on disk; on any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _disk_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def write_shard(path: Path, table: pa.Table) -> None:
    """One Arrow stream file (the format `datasets` memory-maps), written atomically."""

    def write(f):
        with pa.ipc.new_stream(f, table.schema) as writer:
            writer.write_table(table, max_chunksize=1 << 16)

    write_atomic(path, write)


def finished_shards(out: Path) -> dict[int, Path]:
    """{chunk index: shard path} of every finished shard under OUT, across all rank folders."""
    found: dict[int, Path] = {}
    for path in sorted(Path(out).glob(SHARD_GLOB)):
        match = _SHARD_NAME.search(path.name)
        if match:
            found.setdefault(int(match.group(1)), path)
    return found


def remove_partial_shards(out: Path, rank: int) -> None:
    """Delete temporary files a killed writer of this rank left behind (never counted as shards)."""
    folder = shard_path(out, rank, 0).parent
    for tmp in folder.glob(".chunk-*.tmp-*"):
        tmp.unlink(missing_ok=True)


def shard_rows(path: Path) -> int:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all().num_rows


def build_meta(spec: FeatureSpec, pair_identity: dict, corpus: dict, mode: str, extra: dict | None = None) -> dict:
    import datasets
    import torch
    import transformers

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "feature_spec": spec.to_dict(),
        "pair": pair_identity,
        "corpus": corpus,
        "mode": mode,
        "labels": {name: c.definition for name, c in LABEL_COLUMNS.items()},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "library_versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "datasets": datasets.__version__,
            "pyarrow": pa.__version__,
            "numpy": np.__version__,
        },
        **(extra or {}),
    }


def write_dataset_index(out: Path, feature_dim: int) -> None:
    """state.json + dataset_info.json listing every finished shard in chunk order (datasets.load_from_disk)."""
    out = Path(out)
    files = [p.relative_to(out).as_posix() for _, p in sorted(finished_shards(out).items())]
    if not files:
        raise DeferralError(f"{out} holds no finished shard yet: run `deferral log` to completion first")
    state = {
        "_data_files": [{"filename": f} for f in files],
        "_fingerprint": hashlib.sha256("\n".join(files).encode()).hexdigest()[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    info = {
        "citation": "",
        "description": "deferral log: per-token features and labels (see meta.json)",
        "features": hf_features(feature_dim).to_dict(),
        "homepage": "",
        "license": "",
    }
    write_json_atomic(out / "dataset_info.json", info)
    write_json_atomic(out / "state.json", state)


def read_meta(path: Path) -> dict:
    meta_path = Path(path) / "meta.json"
    if not meta_path.is_file():
        raise DeferralError(f"{path} is not a logged dataset (no meta.json): run `deferral log --out {path}` first")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise DeferralError(f"{meta_path} is corrupt: delete the folder and log again") from None
    if meta.get("format") != FORMAT:
        raise DeferralError(f"{path} is not a deferral log (format {meta.get('format')!r}): point at a `deferral log` output")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DeferralError(
            f"{path} uses log format version {meta.get('format_version')}, this version reads {FORMAT_VERSION}: re-log the data"
        )
    return meta


def load_logged(path) -> tuple:
    """Open a logged dataset: (datasets.Dataset of every finished shard in chunk order, meta dict).

    Reads every rank's shard set, so partially finished and multi-process runs open too; the Arrow
    files are memory-mapped, not copied.
    """
    import datasets
    from datasets.table import MemoryMappedTable, concat_tables

    path = Path(path)
    meta = read_meta(path)
    dim = FeatureSpec.from_dict(meta["feature_spec"]).dim
    shards = [p for _, p in sorted(finished_shards(path).items())]
    features = hf_features(dim)
    if shards:
        table = concat_tables([MemoryMappedTable.from_file(str(p)) for p in shards])
    else:
        table = features.arrow_schema.empty_table()
    info = datasets.DatasetInfo(features=features)
    return datasets.Dataset(table, info=info), meta


def check_feature_spec(meta: dict, spec: FeatureSpec) -> None:
    """Raise DeferralError unless data logged with `meta` has exactly the feature layout `spec`."""
    logged = FeatureSpec.from_dict(meta["feature_spec"])
    problem = spec.mismatch(logged)
    if problem:
        raise DeferralError(
            f"data logged with feature version {logged.version} ({logged.dim} features) does not match this "
            f"version {spec.version} ({spec.dim} features): {problem}: re-log with this version"
        )
