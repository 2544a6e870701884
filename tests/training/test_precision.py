"""``TrainConfig.precision`` in the loop (issue 25) and the training checkpoint's identity of the
options added for faster fits: at their defaults they are left out, so a checkpoint written
before they existed still resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gcrdp.errors import ConfigError
from gcrdp.methods import FitData, build_method
from gcrdp.training import TrainConfig
from gcrdp.training import checkpoint as ck
from gcrdp.training.config import LATER_OPTION_DEFAULTS, identity_options
from gcrdp.training.loop import autocast_for, check_precision
from tests.helpers import one_hot, synthetic_features


def test_float32_is_a_null_context_and_bf16_autocasts():
    with autocast_for("float32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.float32
    with autocast_for("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_check_precision_passes_float32_anywhere_and_bf16_on_this_cpu(recwarn):
    check_precision("float32", "cpu")
    check_precision("bf16", "cpu")  # runs (natively or emulated, then with a warning)
    native = torch.cpu._is_avx512_bf16_supported()
    assert any(issubclass(w.category, RuntimeWarning) for w in recwarn.list) == (not native)


def test_the_precision_option_is_checked():
    assert TrainConfig().precision == "float32" and TrainConfig(precision="bf16").precision == "bf16"
    with pytest.raises(ConfigError, match="Training option precision must be one of"):
        TrainConfig(precision="float16")


def test_identity_options_drop_only_the_later_options_at_their_default():
    opts = {"lr": 1e-3, "pca_dim": None, "precision": "float32", "max_epochs": 3}
    assert identity_options(opts) == {"lr": 1e-3, "max_epochs": 3}
    assert identity_options({**opts, "pca_dim": 8, "precision": "bf16"}) == {"lr": 1e-3, "max_epochs": 3, "pca_dim": 8, "precision": "bf16"}
    assert set(LATER_OPTION_DEFAULTS) == {"pca_dim", "precision"}


def _data() -> FitData:
    feats, labels = synthetic_features(n_per_class=8, n_classes=6, seed=2)
    y = one_hot(labels)
    tr, va = np.flatnonzero(labels < 4), np.flatnonzero(labels >= 4)
    return FitData(feats.subset(tr), y[tr], np.zeros(len(tr), bool), feats.subset(va), y[va])


@pytest.mark.parametrize(("options", "stored"), [({}, False), ({"pca_dim": 4, "precision": "bf16"}, True)])
def test_a_training_checkpoint_stores_the_new_options_only_when_set(options, stored, tmp_path):
    method = build_method("gap-infonce", {"max_epochs": 1, "hidden_dim": 8, "latent_dim": 4, **options})
    method.fit(_data(), seed=0, checkpoint_dir=tmp_path / "ck")
    state = ck.read_checkpoint(tmp_path / "ck", kind="training").state
    assert ("precision" in state["train_config"]) == stored
    assert ("pca_dim" in state["method_config"]) == stored and ("precision" in state["method_config"]) == stored
