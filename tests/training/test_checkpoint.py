"""Checkpoints: safetensors + JSON only, atomic writes, clear errors on bad folders, and resume
after an interruption ending bit-identical to an uninterrupted fit."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from gcrdp.errors import ConfigError, DataError
from gcrdp.evaluation import cross_modal_metrics
from gcrdp.methods import FitData, build_method
from gcrdp.methods import persistence as mp
from gcrdp.methods.base import CheckpointableMethod
from gcrdp.methods.contrastive import ContrastiveHeadsMethod
from gcrdp.training import checkpoint as ck
from tests.helpers import one_hot, synthetic_features

OPTS = {"max_epochs": 7, "batch_size": 16, "hidden_dim": 16, "latent_dim": 8, "patience": 100}


def _data(seed: int = 0, n_train_classes: int = 8):
    feats, labels = synthetic_features(n_per_class=12, n_classes=12, seed=seed)
    y = one_hot(labels)
    train = np.flatnonzero(labels < n_train_classes)
    val = np.flatnonzero((labels >= 8) & (labels < 10))
    test = np.flatnonzero(labels >= 10)
    over = np.zeros(len(train), bool)
    over[:3] = True  # a few oversampled pairs, as in an N-shot run
    data = FitData(train=feats.subset(train), train_labels=y[train], oversample=over, val=feats.subset(val), val_labels=y[val])
    return feats, y, data, test


def _weights(method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.model_.state_dict().items()}


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _test_metrics(method, feats, y, test):
    img, txt = method.embed_images(feats.image.subset(test)), method.embed_texts(feats.text.subset(test))
    return cross_modal_metrics(img, txt, y[test], img, txt, y[test])


@pytest.fixture(scope="module")
def fitted():
    feats, y, data, test = _data()
    m = build_method("gap-infonce", OPTS)
    m.fit(data, seed=3)
    return m, feats, y, data, test


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- save / load
def test_gap_infonce_follows_the_checkpoint_contract():
    m = build_method("gap-infonce", OPTS)
    assert isinstance(m, CheckpointableMethod)
    rebuilt = build_method(m.name, mp.method_options(m.config_dict()))
    assert rebuilt.config_dict() == m.config_dict()


def test_a_method_without_the_hooks_is_refused_clearly(tmp_path):
    class Legacy:
        name = "legacy"

        def config_dict(self):
            return {"method": self.name}

        def init_model(self, image_dim, text_dim):
            self.model_ = torch.nn.Linear(image_dim, text_dim)
            return self.model_

        def fit(self, data, *, seed):
            return None

    with pytest.raises(ConfigError, match=r"'legacy' cannot be checkpointed.*checkpoint_dir=.*gcrdp.methods.base"):
        mp.check_checkpointable(Legacy())
    m = Legacy()
    m.fit = lambda data, *, seed, checkpoint_dir=None, resume=True: None
    m.init_model(3, 2)
    with pytest.raises(ConfigError, match="did not record input_dims_"):
        mp.save_method(m, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_save_load_round_trip_gives_identical_embeddings(tmp_path, fitted):
    m, feats, *_ = fitted
    m.save(tmp_path / "ckpt", run={"note": "x"})
    assert _visible(tmp_path) == ["ckpt"]
    assert _visible(tmp_path / "ckpt") == ["model.safetensors", "state.json"]
    for loaded in (ContrastiveHeadsMethod.load(tmp_path / "ckpt"), mp.load_method(tmp_path / "ckpt")):
        assert loaded.config_dict() == m.config_dict()
        assert loaded.input_dims_ == {"image_dim": 12, "text_dim": 8}
        assert np.array_equal(loaded.embed_images(feats.image), m.embed_images(feats.image))
        assert np.array_equal(loaded.embed_texts(feats.text), m.embed_texts(feats.text))
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["format"] == ck.CHECKPOINT_FORMAT and state["kind"] == "final"
    assert state["run"] == {"note": "x"} and state["method"] == "gap-infonce"
    # saving again replaces the folder as a whole
    m.save(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["run"] is None
    assert _visible(tmp_path) == ["ckpt"]


def test_saving_an_unfitted_method_fails_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="call fit"):
        build_method("gap-infonce").save(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_saving_never_replaces_a_folder_that_is_not_a_checkpoint(tmp_path, fitted):
    m, *_ = fitted
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not a gcrdp checkpoint.*refusing to replace it"):
        m.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    m.save(tmp_path / "empty")  # an empty folder is fine
    assert ck.checkpoint_exists(tmp_path / "empty")


def _assert_safetensors_or_json(path: Path) -> None:
    data = path.read_bytes()
    assert not data.startswith(b"\x80"), f"{path} looks like a pickle"
    assert not data.startswith(b"PK"), f"{path} looks like a torch.save zip"
    if path.suffix == ".json":
        json.loads(data)
    else:
        assert path.suffix == ".safetensors"
        (n,) = np.frombuffer(data[:8], dtype="<u8")
        json.loads(data[8 : 8 + int(n)])  # the safetensors header


def test_no_pickle_anywhere(tmp_path, monkeypatch):
    *_, data, _ = _data()

    def forbidden(*a, **k):
        raise AssertionError("pickle-based serialisation used")

    for mod, name in ((torch, "save"), (torch, "load"), (pickle, "dump"), (pickle, "dumps"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(mod, name, forbidden)
    m = build_method("gap-infonce", {**OPTS, "max_epochs": 2})
    m.fit(data, seed=0, checkpoint_dir=tmp_path / "last")
    m.fit(data, seed=0, checkpoint_dir=tmp_path / "last")  # resume path (already finished)
    m.save(tmp_path / "final")
    mp.load_method(tmp_path / "final")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"state.json", "model.safetensors", "optimizer.safetensors", "best.safetensors", "rng.safetensors"}
    for p in files:
        _assert_safetensors_or_json(p)
    rng = ck.read_checkpoint(tmp_path / "last").tensors(ck.RNG_FILE)
    assert rng["cpu"].dtype == torch.uint8
    src = Path(ck.__file__).read_text()
    assert "torch.save(" not in src and "torch.load(" not in src and "import pickle" not in src


# ----------------------------------------------------------------------------- atomic writes
def test_a_crash_during_save_leaves_the_previous_checkpoint_intact(tmp_path, fitted, monkeypatch):
    m, *_ = fitted
    path = tmp_path / "ckpt"
    m.save(path, run={"version": 1})
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    real = ck._write_file

    def crash_on_state(p, data):
        if p.name == ck.STATE_FILE:  # the model file is already written at this point
            raise OSError("disk full (simulated)")
        return real(p, data)

    monkeypatch.setattr(ck, "_write_file", crash_on_state)
    with pytest.raises(OSError, match="simulated"):
        m.save(path, run={"version": 2})
    monkeypatch.undo()
    assert _visible(tmp_path) == ["ckpt"], "no half-written folder, hidden or not, is left"
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert ck.read_checkpoint(path).state["run"] == {"version": 1}

    # a crash between the two renames: the in-process handler puts the old folder back
    real_rename, failed = os.rename, []

    def rename(src, dst):
        if Path(dst) == path and not failed:  # the new folder's rename fails, once
            failed.append(dst)
            raise OSError("killed (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(ck.os, "rename", rename)
    with pytest.raises(OSError, match="killed"):
        m.save(path, run={"version": 3})
    monkeypatch.undo()
    assert _visible(tmp_path) == ["ckpt"]
    assert ck.read_checkpoint(path).state["run"] == {"version": 1}


def test_a_hard_kill_between_the_renames_is_recovered(tmp_path, fitted):
    """Process killed after 'ckpt' → '.ckpt.old' and before the new folder took its place:
    readers use '.ckpt.old'; the next write puts things right."""
    m, feats, *_ = fitted
    path = tmp_path / "ckpt"
    m.save(path, run={"version": 1})
    os.rename(path, tmp_path / ".ckpt.old")
    (tmp_path / ".ckpt.tmp-123-abcd").mkdir()  # the orphaned new folder (incomplete)
    assert ck.checkpoint_exists(path)
    assert ck.read_checkpoint(path).state["run"] == {"version": 1}
    assert np.array_equal(mp.load_method(path).embed_images(feats.image), m.embed_images(feats.image))
    m.save(path, run={"version": 2})
    assert _visible(tmp_path) == ["ckpt"]
    assert ck.read_checkpoint(path).state["run"] == {"version": 2}


# ----------------------------------------------------------------------------- bad folders
def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path, fitted):
    m, *_ = fitted
    with pytest.raises(DataError, match="Checkpoint folder not found: .*nowhere"):
        mp.load_method(tmp_path / "nowhere")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        mp.load_method(tmp_path / "afile")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no state.json"):
        mp.load_method(tmp_path / "empty")

    def fresh(name: str) -> Path:
        m.save(tmp_path / name)
        return tmp_path / name

    p = fresh("nomodel")
    (p / "model.safetensors").unlink()
    with pytest.raises(DataError, match=r"incomplete: missing \['model.safetensors'\]"):
        mp.load_method(p)
    p = fresh("truncated")
    data = (p / "model.safetensors").read_bytes()
    (p / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="is corrupt"):
        mp.load_method(p)
    p = fresh("bitflip")
    data = bytearray((p / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (p / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(DataError, match="size or checksum differs"):
        mp.load_method(p)
    p = fresh("badjson")
    (p / "state.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        mp.load_method(p)

    def edit(name: str, **changes) -> Path:
        p = fresh(name)
        state = json.loads((p / "state.json").read_text())
        state.update(changes)
        (p / "state.json").write_text(json.dumps(state))
        return p

    with pytest.raises(DataError, match="format 'gcrdp-checkpoint/999'.*reads 'gcrdp-checkpoint/1'"):
        mp.load_method(edit("format", format="gcrdp-checkpoint/999"))
    with pytest.raises(ConfigError, match="method 'magic'.*Unknown method 'magic'.*gap-infonce"):
        mp.load_method(edit("method", method="magic"))
    with pytest.raises(DataError, match=r"does not fit the model.*shape mismatch.*\(16, 12\) vs model \(16, 20\)"):
        mp.load_method(edit("dims", input_dims={"image_dim": 20, "text_dim": 8}))
    cfg = {**m.config_dict(), "latent_dim": 4}
    with pytest.raises(DataError, match="shape mismatch"):
        mp.load_method(edit("config", method_config=cfg))
    with pytest.raises(DataError, match="lacks the field"):
        mp.load_method(_drop(fresh("nokind"), "kind"))
    with pytest.raises(DataError, match="is a final checkpoint, expected a training one"):
        ck.read_checkpoint(fresh("final"), kind="training")


def _drop(p: Path, key: str) -> Path:
    state = json.loads((p / "state.json").read_text())
    del state[key]
    (p / "state.json").write_text(json.dumps(state))
    return p


def test_optimizer_state_round_trips_exactly():
    for opt_cls, kw in ((torch.optim.Adam, {}), (torch.optim.AdamW, {"weight_decay": 0.1})):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        opt = opt_cls(net.parameters(), lr=1e-2, **kw)
        for _ in range(3):
            opt.zero_grad()
            net(torch.randn(5, 4)).square().sum().backward()
            opt.step()
        tensors, meta = ck.optimizer_tensors(opt)
        assert set(tensors) >= {"state.0.step", "state.0.exp_avg", "state.3.exp_avg_sq"}
        opt2 = opt_cls(net.parameters(), lr=1e-2, **kw)
        ck.load_optimizer(opt2, tensors, meta, "x")
        a, b = opt.state_dict(), opt2.state_dict()
        assert a["param_groups"] == b["param_groups"]
        for pid in a["state"]:
            for key in a["state"][pid]:
                assert torch.equal(a["state"][pid][key], b["state"][pid][key])
    with pytest.raises(DataError, match="holds 'AdamW' state"):
        ck.load_optimizer(torch.optim.Adam(net.parameters()), tensors, meta, "x")


# ----------------------------------------------------------------------------- resume
def _interrupt_mid_epoch(method, after_calls: int):
    real, calls = method._loss, [0]

    def step(model, batch):
        calls[0] += 1
        if calls[0] > after_calls:
            raise KeyboardInterrupt
        return real(model, batch)

    method._loss = step  # fit passes self._loss, which now resolves to this wrapper


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.05, "patience": 3}])
def test_resume_after_interruption_equals_an_uninterrupted_fit(tmp_path, options):
    feats, y, data, test = _data()
    opts = {**OPTS, **options}
    ref = build_method("gap-infonce", opts)
    ref_report = ref.fit(data, seed=7)
    ref_metrics = _test_metrics(ref, feats, y, test)

    killed = build_method("gap-infonce", opts)
    _interrupt_mid_epoch(killed, after_calls=12)  # 6 batches per epoch: killed inside epoch 3
    with pytest.raises(KeyboardInterrupt):
        killed.fit(data, seed=7, checkpoint_dir=tmp_path / "last")
    state = ck.read_checkpoint(tmp_path / "last", kind="training").state
    assert state["epoch"] == 2 and len(state["history"]) == 2

    resumed = build_method("gap-infonce", opts)
    report = resumed.fit(data, seed=7, checkpoint_dir=tmp_path / "last")
    assert report.extra["resumed_from_epoch"] == 2
    assert report.history == ref_report.history
    assert (report.epochs, report.best_epoch, report.best_val_map) == (ref_report.epochs, ref_report.best_epoch, ref_report.best_val_map)
    assert _same_weights(_weights(resumed), _weights(ref))
    assert np.array_equal(resumed.embed_images(feats.image), ref.embed_images(feats.image))
    assert _test_metrics(resumed, feats, y, test) == ref_metrics
    # the stored best weights are the best epoch's, i.e. what the fit restored
    best = ck.read_checkpoint(tmp_path / "last").tensors(ck.BEST_FILE)
    assert _same_weights(best, _weights(ref))


def test_resume_after_a_crash_while_writing_a_checkpoint(tmp_path, monkeypatch):
    *_, data, _ = _data()
    ref = build_method("gap-infonce", OPTS)
    ref_report = ref.fit(data, seed=1)
    real, saves = ck.write_checkpoint, [0]

    def crash_on_fourth(path, state, files, links=None):
        saves[0] += 1
        if saves[0] == 4:  # dies half way through writing epoch 4's checkpoint

            def die(p, data):
                raise KeyboardInterrupt

            monkeypatch.setattr(ck, "_write_file", die)
        return real(path, state, files, links)

    monkeypatch.setattr(ck, "write_checkpoint", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        build_method("gap-infonce", OPTS).fit(data, seed=1, checkpoint_dir=tmp_path / "last")
    monkeypatch.undo()
    assert _visible(tmp_path) == ["last"]
    assert ck.read_checkpoint(tmp_path / "last").state["epoch"] == 3
    resumed = build_method("gap-infonce", OPTS)
    report = resumed.fit(data, seed=1, checkpoint_dir=tmp_path / "last")
    assert report.history == ref_report.history
    assert _same_weights(_weights(resumed), _weights(ref))


def test_resume_needs_the_rng_state_to_be_exact(tmp_path, monkeypatch):
    """Negative control: without restoring the RNG, dropout differs after a resume — the
    equality above is not an accident of the test."""
    *_, data, _ = _data()
    ref = build_method("gap-infonce", OPTS)
    ref_report = ref.fit(data, seed=2)
    killed = build_method("gap-infonce", OPTS)
    _interrupt_mid_epoch(killed, after_calls=12)
    with pytest.raises(KeyboardInterrupt):
        killed.fit(data, seed=2, checkpoint_dir=tmp_path / "last")
    monkeypatch.setattr(ck, "restore_rng", lambda tensors, device: None)
    resumed = build_method("gap-infonce", OPTS)
    report = resumed.fit(data, seed=2, checkpoint_dir=tmp_path / "last")
    assert report.history[:2] == ref_report.history[:2]
    assert report.history[2:] != ref_report.history[2:]  # other dropout masks from epoch 3 on


def test_resuming_a_finished_fit_restores_its_best_weights_without_training(tmp_path):
    *_, data, _ = _data()
    first = build_method("gap-infonce", {**OPTS, "patience": 2, "max_epochs": 30})
    r1 = first.fit(data, seed=0, checkpoint_dir=tmp_path / "last")
    assert ck.read_checkpoint(tmp_path / "last").state["stopped"] is True
    again = build_method("gap-infonce", {**OPTS, "patience": 2, "max_epochs": 30})
    _interrupt_mid_epoch(again, after_calls=0)  # any training step would raise
    r2 = again.fit(data, seed=0, checkpoint_dir=tmp_path / "last")
    assert r2.history == r1.history and r2.best_epoch == r1.best_epoch
    assert _same_weights(_weights(again), _weights(first))


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    *_, data, _ = _data()
    opts = {**OPTS, "max_epochs": 2}
    build_method("gap-infonce", opts).fit(data, seed=0, checkpoint_dir=tmp_path / "last")
    with pytest.raises(ConfigError, match="belongs to another run.*seed: checkpoint 0, now 1.*--no-resume"):
        build_method("gap-infonce", opts).fit(data, seed=1, checkpoint_dir=tmp_path / "last")
    with pytest.raises(ConfigError, match="method_config.*train_config"):
        build_method("gap-infonce", {**opts, "lr": 0.01}).fit(data, seed=0, checkpoint_dir=tmp_path / "last")
    _, _, other, _ = _data(n_train_classes=7)
    with pytest.raises(ConfigError, match="data_fingerprint"):
        build_method("gap-infonce", opts).fit(other, seed=0, checkpoint_dir=tmp_path / "last")
    # resume=False starts afresh and overwrites the checkpoint
    build_method("gap-infonce", opts).fit(other, seed=1, checkpoint_dir=tmp_path / "last", resume=False)
    assert ck.read_checkpoint(tmp_path / "last").state["seed"] == 1


def test_checkpointing_does_not_change_the_fit(tmp_path):
    *_, data, _ = _data()
    a, b = build_method("gap-infonce", OPTS), build_method("gap-infonce", OPTS)
    ra = a.fit(data, seed=4)
    rb = b.fit(data, seed=4, checkpoint_dir=tmp_path / "last")
    assert ra.history == rb.history and _same_weights(_weights(a), _weights(b))
    final = mp.load_method(tmp_path / "last")  # a training checkpoint loads too: last epoch's weights
    assert final.config_dict() == b.config_dict()
