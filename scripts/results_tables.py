"""Print Markdown study tables (rows = method entries, columns = shots) from results files.

    python scripts/results_tables.py runs/ablation/results.json [more results.json ...]

For each file: the mean of I2T and T2I mAP@all (%, mean ± std over seeds), then I2T and T2I
separately, and the validation mAP (held-out seen classes) that choices are made on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gcrdp.experiments.table import format_study_table


def main(paths: list[str]) -> None:
    for p in paths:
        res = json.loads(Path(p).read_text())
        cfg = res["config"]
        print(f"### {Path(p).parent.name}: {cfg['dataset']}, {len(cfg['seeds'])} seeds\n")
        for key, title in (("mean_map", "mean of I2T and T2I"), ("i2t_map", "I2T"), ("t2i_map", "T2I")):
            print(f"{title} mAP@all (%)\n")
            print(format_study_table(res["summary"], cfg["methods"], key=key))
            print()
        extra = {}
        for r in res["records"]:
            h = r["fit"]["history"][max(r["fit"]["best_epoch"], 1) - 1]
            e = extra.setdefault(r["method"], {"epochs": [], "seconds": [], "entropy": []})
            e["epochs"].append(r["fit"]["epochs"])
            e["seconds"].append(r["fit"]["seconds"])
            if "pi_entropy_image" in h:
                e["entropy"].append((h["pi_entropy_image"] + h["pi_entropy_text"]) / 2)
        print("| method | mean epochs | mean fit seconds | mean π entropy at best epoch |\n|---|---|---|---|")
        for m, e in extra.items():
            ent = f"{sum(e['entropy']) / len(e['entropy']):.3f}" if e["entropy"] else "–"
            print(f"| `{m}` | {sum(e['epochs']) / len(e['epochs']):.1f} | "
                  f"{sum(e['seconds']) / len(e['seconds']):.1f} | {ent} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
