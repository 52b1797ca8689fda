"""Fit a drafting stop head on a `deferral log` folder and write it as JSON for `--draft-stop`.

    deferral log --data stdlib:train --max-docs 16 --max-positions 60000 --out runs/stoplog
    python benchmarks/fit_stop_head.py runs/stoplog --out runs/stop_head.json
    deferral generate --drafter models/default-drafter --rule speculative --draft-stop runs/stop_head.json ...
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from deferral.errors import exit_code_of


def fit(args) -> int:
    from deferral.features import FeatureSpec
    from training.logs.logged_data import load_logged
    from training.stop_head import fit_stop_head

    ds, meta = load_logged(args.log)
    names = FeatureSpec.from_dict(meta["feature_spec"]).names
    ds = ds.with_format("numpy")
    head, report = fit_stop_head(np.asarray(ds["features"], dtype=np.float32), names, np.asarray(ds["doc_id"]))
    head.save(args.out)
    print(f"wrote {args.out}; held out {report['held_out_positions']} positions: kept {report['kept']:.3f}, "
          f"mean predicted {report['mean_predicted_keep']:.3f}, AUROC {report['auroc_head']:.3f} "
          f"(top probability alone {report['auroc_top_probability']:.3f})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="a `deferral log` folder")
    parser.add_argument("--out", required=True, help="the stop head's JSON file")
    args = parser.parse_args(argv)
    return exit_code_of(lambda: fit(args))


if __name__ == "__main__":
    sys.exit(main())
