"""What the GMM module of a fitted GCRDP model does, on the validation and the test pairs.

    python scripts/gmm_diagnostics.py --shots 5 --seeds 0 1 2 [--option KEY=VALUE ...]

For each seed: fit ``gcrdp`` (default options unless ``--option``) on Twemoji, then report for
the validation pairs (held-out seen classes) and the test pairs (unseen classes):

* mAP of the default embedding (normalised π-weighted mean of the K views), of the set-to-set
  ``views`` score, and of plain global average pooling of the *same* projected local features
  (the GMM switched off at inference only): how much of the retrieval the mixture itself does;
* the mixture's health: mean entropy of π (log K = even), mean largest weight, mean largest
  responsibility of a point (1 = hard assignment), the mean cosine between two views of one
  sample (1 = the K views coincide) and between the GMM embedding and the GAP embedding.

With ``--curve``, the script instead trains ``gcrdp`` and ``gap-infonce`` for a fixed number
of epochs (``--epochs``; early stopping off) and prints, after every epoch, the validation mAP
the early stopping sees and the test mAP it does not: where each peaks tells whether the two
splits agree on when to stop. (The test mAP is computed by wrapping the loop's validation
function; training itself is unchanged.)

Nothing here is used to choose settings (choices are made on validation mAP in the studies);
the test figures are reported to explain the studies' results.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from gcrdp.data.protocol import make_split
from gcrdp.data.registry import load_dataset
from gcrdp.evaluation import cross_modal_metrics
from gcrdp.experiments.config import RunConfig
from gcrdp.experiments.runner import fit_data_for, load_features
from gcrdp.methods import build_method
from gcrdp.model import masked_mean
from gcrdp.model.gmm import gmm_views, mixture_entropy


@torch.inference_mode()
def _encode_all(model, feats, which: str) -> dict[str, np.ndarray]:
    head = model.image_head if which == "image" else model.text_head
    gmm = model.image_gmm if which == "image" else model.text_gmm
    local = torch.from_numpy(np.ascontiguousarray(feats.local)).float()
    mask = torch.from_numpy(np.ascontiguousarray(feats.mask))
    x = head(local)  # (n, L, D)
    res = gmm(x, mask)
    views, g = gmm_views(res)  # (n, K, D), (n, D)
    gap = F.normalize(masked_mean(x, mask), dim=-1)  # (n, D)
    k = views.shape[1]
    cos = views @ views.transpose(1, 2)  # (n, K, K)
    off = ~torch.eye(k, dtype=torch.bool)
    view_cos = cos[:, off].mean(1) if k > 1 else torch.ones(len(views))
    resp_max = (res.resp.max(-1).values * mask).sum(1) / mask.sum(1).clamp_min(1)
    return {
        "global": g.numpy(),
        "views": (views.flatten(1) / np.sqrt(k)).numpy(),
        "gap": gap.numpy(),
        "entropy": mixture_entropy(res.weights).numpy(),
        "pi_max": res.weights.max(-1).values.numpy(),
        "resp_max": resp_max.numpy(),
        "view_cos": view_cos.numpy(),
        "gmm_gap_cos": (g * gap).sum(-1).numpy(),
    }


def diagnose(method, feats, labels) -> dict[str, float]:
    model = method.model_
    model.eval()
    img, txt = _encode_all(model, feats.image, "image"), _encode_all(model, feats.text, "text")
    out = {}
    for score in ("global", "views", "gap"):
        m = cross_modal_metrics(img[score], txt[score], labels, img[score], txt[score], labels)
        out[f"map_{score}"] = float(m["mean_map"])
    for key in ("entropy", "pi_max", "resp_max", "view_cos", "gmm_gap_cos"):
        out[f"image_{key}"] = float(img[key].mean())
        out[f"text_{key}"] = float(txt[key].mean())
    return out


def curves(dataset, features, labels, shots: int, seeds: list[int], epochs: int, options: dict) -> None:
    import gcrdp.training.loop as loop

    rows: dict[str, list[list[tuple[float, float]]]] = {}
    for seed in seeds:
        split = make_split(dataset, shots=shots, seed=seed)
        data = fit_data_for(split, features, labels, dataset.classes)
        test_feats, test_labels = features.subset(split.test_query), labels[split.test_query]
        for name in ("gap-infonce", "gcrdp"):
            method = build_method(name, {**(options if name == "gcrdp" else {}), "max_epochs": epochs, "patience": epochs})
            seen: list[tuple[float, float]] = []
            original = loop.validation_map

            def both(embed, feats, lab, _orig=original, _seen=seen):
                val = _orig(embed, feats, lab)
                _seen.append((val, _orig(embed, test_feats, test_labels)))
                return val

            loop.validation_map = both
            try:
                method.fit(data, seed=seed)
            finally:
                loop.validation_map = original
            rows.setdefault(name, []).append(seen)
    print(f"{shots}-shot, seeds {seeds}: mean over seeds of val mAP / test mAP (%) after each epoch\n")
    print("| epoch | gap-infonce val | gap-infonce test | gcrdp val | gcrdp test |\n|---|---|---|---|---|")
    for e in range(epochs):
        cells = []
        for name in ("gap-infonce", "gcrdp"):
            v = np.mean([r[e] for r in rows[name]], axis=0)
            cells += [f"{100 * v[0]:.1f}", f"{100 * v[1]:.1f}"]
        print(f"| {e + 1} | " + " | ".join(cells) + " |")
    for name in ("gap-infonce", "gcrdp"):
        best_val = [int(np.argmax([a for a, _ in r])) + 1 for r in rows[name]]
        best_test = [int(np.argmax([b for _, b in r])) + 1 for r in rows[name]]
        print(f"\n{name}: best val epoch per seed {best_val}; best test epoch per seed {best_test}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--output", default=None, help="also write the figures as JSON")
    p.add_argument("--curve", action="store_true", help="val and test mAP after every epoch (see above)")
    p.add_argument("--epochs", type=int, default=25, help="with --curve: epochs to train")
    args = p.parse_args(argv)
    options = {}
    for kv in args.option:
        k, v = kv.split("=", 1)
        options[k] = json.loads(v) if v[:1] in "0123456789-[{tfn" else v
    dataset = load_dataset("twemoji")
    features = load_features(dataset, RunConfig(), progress=False)
    labels = dataset.label_matrix()
    if args.curve:
        curves(dataset, features, labels, args.shots, args.seeds, args.epochs, options)
        return
    rows = []
    for seed in args.seeds:
        split = make_split(dataset, shots=args.shots, seed=seed)
        data = fit_data_for(split, features, labels, dataset.classes)
        method = build_method("gcrdp", options)
        method.fit(data, seed=seed)
        for name, idx in (("val", split.val), ("test", split.test_query)):
            rows.append({"seed": seed, "split": name, **diagnose(method, features.subset(idx), labels[idx])})
    keys = [k for k in rows[0] if k not in ("seed", "split")]
    print(f"gcrdp {options or '(defaults)'}, {args.shots}-shot, seeds {args.seeds}: mean over seeds\n")
    print("| quantity | val | test |\n|---|---|---|")
    for k in keys:
        v = [np.mean([r[k] for r in rows if r["split"] == s]) for s in ("val", "test")]
        scale = 100 if k.startswith("map_") else 1
        print(f"| {k} | {scale * v[0]:.3f} | {scale * v[1]:.3f} |")
    if args.output:
        with open(args.output, "w") as fh:
            json.dump({"options": options, "shots": args.shots, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
