"""Choose a method's settings on the validation split (never the test split).

For each option set in the grid, fits the method for every (shots, seed) and reports the mean
best validation mAP (held-out seen classes) and the epochs used. The test split is not touched.

    PYTHONPATH=src python scripts/tune_on_validation.py --method gap-infonce \
        --grid '[{"lr": 1e-3, "temperature": 0.07}, {"lr": 1e-4, "max_epochs": 100}]'
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from gcrdp.data.protocol import make_split
from gcrdp.data.registry import load_dataset
from gcrdp.experiments import RunConfig
from gcrdp.experiments.runner import load_features
from gcrdp.methods import FitData, build_method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="twemoji")
    ap.add_argument("--method", default="gap-infonce")
    ap.add_argument("--grid", required=True, help="JSON list of option dicts")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    ds = load_dataset(args.dataset)
    feats = load_features(ds, RunConfig(dataset=args.dataset, cache_dir=args.cache_dir), progress=False)
    y = ds.label_matrix()
    print("| options | mean best val mAP | epochs | seconds |\n|---|---|---|---|")
    for opts in json.loads(args.grid):
        vals, epochs, t0 = [], [], time.perf_counter()
        for shots in args.shots:
            for seed in args.seeds:
                sp = make_split(ds, shots=shots, seed=seed)
                data = FitData(feats.subset(sp.train), y[sp.train], np.isin(sp.train, sp.fewshot), feats.subset(sp.val), y[sp.val])
                report = build_method(args.method, opts).fit(data, seed=seed)
                vals.append(report.best_val_map)
                epochs.append(report.epochs)
        print(f"| `{json.dumps(opts)}` | {100 * np.mean(vals):.1f} | {epochs} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
