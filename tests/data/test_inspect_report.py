"""`gcrdp inspect`'s report names every group of byte-identical images (issue 20, item 8: it
named only the first of 8 pairs) and a class split that a run would refuse."""

from __future__ import annotations

import csv

from PIL import Image

from gcrdp.data import load_manifest
from gcrdp.data.inspect import format_summary, summarize_dataset


def test_every_duplicate_pair_is_named_and_the_split_problem_is_a_warning(tmp_path):
    (tmp_path / "img").mkdir()
    rows = []
    classes = ["devices", "actions", "apps", "places", "status", "mimetypes", "emblems"]  # split_seed 0: 1 seen
    for k, c in enumerate(classes):
        for i in range(4):
            Image.new("RGB", (20, 20), (30 * k, 60 * i, 7)).save(tmp_path / "img" / f"{c}{i}.png")
            rows.append([f"img/{c}{i}.png", f"{c} {i}", c, f"{c}-{i}"])
    for k in range(8):  # 8 pairs of byte-identical files
        (tmp_path / "img" / f"copy{k}.png").write_bytes((tmp_path / "img" / f"{classes[k % 7]}{k // 7}.png").read_bytes())
        rows.append([f"img/copy{k}.png", f"copy {k}", classes[k % 7], f"copy-{k}"])
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "label", "id"])
        w.writerows(rows)
    summary = summarize_dataset(load_manifest(tmp_path / "m.csv"))
    assert summary["images"]["duplicates"] == 8 and len(summary["images"]["duplicate_groups"]) == 8
    text = format_summary(summary)
    for k in range(8):
        assert f"'copy-{k}'" in text
    assert "8 images have the same bytes as an earlier one, in 8 group(s)" in text
    assert "the class split cannot serve the fewshot protocol: 1 seen class" in text and "'gcrdp run' stops on this" in text
    assert summary["class_split_problems"]
