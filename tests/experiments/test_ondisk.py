"""Features on disk give exactly the results of features in memory: the same batches, fits,
validation, test metrics and records — for the trainable methods and the closed-form ones, with
--jobs, and across a checkpoint resume (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest

from gcrdp.data.formats import arrays as arrays_mod
from gcrdp.data.registry import load_dataset
from gcrdp.experiments.config import RunConfig
from gcrdp.experiments.runner import load_features, place_features, run_experiment
from tests.helpers import synthetic_features

FAST = {"max_epochs": 3, "patience": 2, "batch_size": 16, "latent_dim": 16, "hidden_dim": 24}


@pytest.fixture
def feature_folder(tmp_path, monkeypatch):
    """A .npy feature folder (float16 grids, masked texts) that the reader opens lazily."""
    monkeypatch.setattr(arrays_mod, "LAZY_NPY_BYTES", 0)
    feats, labels = synthetic_features(n_per_class=14, n_classes=10, image_L=6, text_L=4, dtype=np.float16, seed=5)
    folder = tmp_path / "feats"
    folder.mkdir()
    np.save(folder / "image.npy", feats.image.local)
    np.save(folder / "text.npy", feats.text.local)
    np.save(folder / "text_mask.npy", feats.text.mask)
    np.save(folder / "labels.npy", labels)
    np.save(folder / "is_test.npy", (np.arange(len(labels)) % 4 == 0).astype(np.int8))
    return folder


def _strip(obj):
    """A record without its timings and file locations (the only fields allowed to differ)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if "seconds" not in k and k not in ("checkpoint",)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _config(folder, cache, storage, methods, **kw):
    return RunConfig(
        dataset="features",
        dataset_options={"path": str(folder)},
        shots=[0, 2],
        seeds=[0],
        methods=methods,
        method_options={m: dict(FAST) for m in methods if m in ("gap-infonce", "gcrdp")},
        cache_dir=str(cache),
        feature_storage=storage,
        device="cpu",
        **kw,
    )


def test_the_reader_keeps_large_npy_files_on_disk(feature_folder, tmp_path):
    ds = load_dataset("features", path=str(feature_folder))
    assert ds.features is not None and ds.features.on_disk
    eager_ds = load_dataset("features", path=str(feature_folder))
    mem = place_features(eager_ds.features, "memory", tmp_path / "c")
    assert not mem.on_disk
    assert mem.content_digest() == ds.features.content_digest()
    disk = place_features(ds.features, "disk", tmp_path / "c")
    assert disk.on_disk and disk.meta["store"].startswith(str(tmp_path / "c" / "stores"))
    assert disk.content_digest() == mem.content_digest()
    # the store is reused while its sources are unchanged
    again = place_features(load_dataset("features", path=str(feature_folder)).features, "disk", tmp_path / "c")
    assert again.meta["store"] == disk.meta["store"]


def test_auto_storage_chooses_by_size(feature_folder, tmp_path, monkeypatch):
    from gcrdp.experiments import runner

    cfg = _config(feature_folder, tmp_path / "c", "auto", ["cca"])
    ds = load_dataset("features", path=str(feature_folder))
    assert not load_features(ds, cfg).on_disk
    monkeypatch.setattr(runner, "AUTO_DISK_BYTES", 1000)
    ds = load_dataset("features", path=str(feature_folder))
    assert load_features(ds, cfg).on_disk


@pytest.mark.parametrize("methods", [["gap-infonce", "cca"], pytest.param(["gcrdp", "dscmr"], marks=pytest.mark.slow)])
def test_disk_and_memory_runs_give_identical_records(feature_folder, tmp_path, methods):
    mem = run_experiment(_config(feature_folder, tmp_path / "c", "memory", methods), progress=False)
    disk = run_experiment(_config(feature_folder, tmp_path / "c", "disk", methods), progress=False)
    assert mem["resolved"]["features"]["storage"] == "memory"
    assert disk["resolved"]["features"]["storage"] == "disk"
    assert mem["resolved"]["features"]["key"] == disk["resolved"]["features"]["key"]
    assert _strip(disk["records"]) == _strip(mem["records"])
    assert _strip(disk["summary"]) == _strip(mem["summary"])


@pytest.mark.slow  # worker processes: about 37 s on 2 loaded cores
def test_disk_features_in_worker_processes_give_the_sequential_records(feature_folder, tmp_path):
    cfg = _config(feature_folder, tmp_path / "c", "disk", ["gap-infonce"])
    seq = run_experiment(RunConfig(**{**cfg.to_dict(), "seeds": [0, 1]}), progress=False)
    par = run_experiment(RunConfig(**{**cfg.to_dict(), "seeds": [0, 1]}), progress=False, jobs=2)
    assert _strip(par["records"]) == _strip(seq["records"])


def test_a_resumed_run_moves_between_memory_and_disk(feature_folder, tmp_path):
    """Fit records are keyed by content, not by where the features live: a run started in
    memory resumes on disk (and the other way) without refitting."""
    out = tmp_path / "run"
    first = run_experiment(_config(feature_folder, tmp_path / "c", "memory", ["gap-infonce"]), output_dir=out, progress=False)
    again = run_experiment(_config(feature_folder, tmp_path / "c", "disk", ["gap-infonce"]), output_dir=out, progress=False)
    assert again["records"] == first["records"]  # reused, timings included


def test_a_checkpointed_fit_resumes_on_disk_features(feature_folder, tmp_path):
    """A fit interrupted in memory resumes on the same features on disk and ends with the
    uninterrupted fit's weights and history."""
    from gcrdp.data.protocol import make_split
    from gcrdp.experiments.runner import fit_data_for
    from gcrdp.methods import build_method

    ds = load_dataset("features", path=str(feature_folder))
    mem = place_features(ds.features, "memory", tmp_path / "c")
    disk = place_features(ds.features, "disk", tmp_path / "c")
    labels = ds.label_matrix()
    split = make_split(ds, shots=2, seed=0)
    data_mem, data_disk = fit_data_for(split, mem, labels, ds.classes), fit_data_for(split, disk, labels, ds.classes)
    assert data_disk.train.on_disk
    opts = {**FAST, "max_epochs": 4, "patience": 10}

    ref = build_method("gap-infonce", opts)
    ref_report = ref.fit(data_mem, seed=3)

    killed = build_method("gap-infonce", opts)
    real, calls = killed._loss, [0]

    def step(model, batch):
        calls[0] += 1
        if calls[0] > 10:
            raise KeyboardInterrupt
        return real(model, batch)

    killed._loss = step
    with pytest.raises(KeyboardInterrupt):
        killed.fit(data_mem, seed=3, checkpoint_dir=tmp_path / "last")
    resumed = build_method("gap-infonce", opts)
    report = resumed.fit(data_disk, seed=3, checkpoint_dir=tmp_path / "last")
    assert report.extra["resumed_from_epoch"] >= 1
    assert report.history == ref_report.history
    a, b = ref.model_.state_dict(), resumed.model_.state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert np.array_equal(resumed.embed_images(disk.image), ref.embed_images(mem.image))


def test_a_store_damaged_under_a_run_stops_it_and_the_next_run_rebuilds_it(feature_folder, tmp_path):
    from gcrdp.data.lazy import StoreDamaged

    cfg = _config(feature_folder, tmp_path / "c", "disk", ["gap-infonce"])
    ref = run_experiment(cfg, progress=False)
    (store,) = (tmp_path / "c" / "stores").iterdir()
    f = store / "image_local.npy"
    raw = bytearray(f.read_bytes())
    for pos in range(len(raw) - 5000, len(raw), 97):  # bytes of the last rows (test and train pairs alike)
        raw[pos] ^= 0x10
    f.write_bytes(bytes(raw))
    with pytest.raises(StoreDamaged, match="fails its checksum.*rebuilt on the next run"):
        run_experiment(cfg, progress=False)
    again = run_experiment(cfg, progress=False)
    assert _strip(again["records"]) == _strip(ref["records"])


def test_in_memory_batches_gathered_by_numpy_equal_the_upcast_ones(feature_folder, tmp_path, monkeypatch):
    """Half-precision features too large to upcast once are gathered per batch with numpy: the
    same batches, so the same records."""
    from gcrdp.training import loop

    cfg = _config(feature_folder, tmp_path / "c", "memory", ["gap-infonce"])
    upcast = run_experiment(cfg, progress=False)
    monkeypatch.setattr(loop, "UPCAST_ONCE_BYTES", 0)
    gathered = run_experiment(cfg, progress=False)
    assert _strip(gathered["records"]) == _strip(upcast["records"])
