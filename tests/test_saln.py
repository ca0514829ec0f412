"""SALN callback: selection inside the training step, its baselines, the guard, caching, resume and errors."""

import glob
import math
import os
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from lightning_balance import BalancedDataModule, LinearRamp
from lightning_balance.callbacks import SALN
from lightning_balance.functional import spectral_scores
from lightning_balance.selection import (
    jest_select,
    keep_count,
    resolve_keep,
    select_top_k,
    selective_backprop_select,
)
from tests.helpers import ToyData, ToyModel, trainer

SIZES = (300, 60, 12, 4)


class Record(pl.Callback):
    """Records every training batch's indices as this callback sees them in `transform_train_batch`."""

    def __init__(self) -> None:
        self.steps: list[list[int]] = []
        self.inputs: list[torch.Tensor] = []

    def transform_train_batch(self, trainer, pl_module, batch, indices):
        self.steps.append(indices.cpu().tolist())
        self.inputs.append(batch[0].detach().clone())
        return batch, indices


class LossModel(ToyModel):
    """A toy model with the selection hooks. `per_sample_loss` is the first input feature, so the expected
    choice of the loss baseline is known without running the model."""

    def __init__(self) -> None:
        super().__init__()
        self.train_batches: list[torch.Tensor] = []
        self.train_targets: list[torch.Tensor] = []

    def per_sample_loss(self, batch):
        return batch[0][:, 0] * 1.0

    def embed(self, batch):
        return self.layer(batch[0])

    def training_step(self, batch, batch_idx):
        self.train_batches.append(batch[0].detach().clone())
        self.train_targets.append(batch[1].detach().clone())
        return super().training_step(batch, batch_idx)


class Reference(nn.Module):
    """A reference model whose per-sample loss is the second input feature; counts the samples it scores."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.seen: list[int] = []

    def per_sample_loss(self, batch):
        self.calls += len(batch[0])
        return batch[0][:, 1] * 1.0


class CountingExtractor(nn.Module):
    """A frozen extractor that records how many samples it embedded and the mode it ran in."""

    def __init__(self, out_shape=None) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.samples = 0
        self.modes: list[bool] = []
        self.out_shape = out_shape

    def forward(self, x):
        self.samples += len(x)
        self.modes.append(self.training)
        out = self.proj(x)
        return out.reshape(len(x), *self.out_shape) if self.out_shape else out


def fit(callbacks, model=None, max_steps=12, data=None, **dm_kwargs):
    dm_kwargs = {"batch_size": 16, "samples_per_epoch": 96, **dm_kwargs}
    dm = data if data is not None else ToyData(sizes=SIZES, **dm_kwargs)
    model = model or LossModel()
    torch.manual_seed(0)
    trainer(max_steps=max_steps, callbacks=callbacks).fit(model, dm)
    return model, dm


def dataset_rows(dm, steps):
    x = dm.train_dataset.tensors[0]
    return [x[torch.tensor(step)] for step in steps]


# ---------------------------------------------------------------------------------------------- selection


def test_spectral_keeps_the_top_scores_of_each_batch():
    before, after = Record(), Record()
    model, dm = fit([before, SALN(keep=0.25), after])
    assert len(before.steps) == len(after.steps) == 12
    for full, kept, x in zip(before.steps, after.steps, before.inputs, strict=True):
        assert len(full) == 16 and len(kept) == keep_count(0.25, 16) == 4
        want = select_top_k(spectral_scores(x), 4)  # generic inputs: no ties
        assert kept == [full[i] for i in want.tolist()]
    # The training step receives exactly the kept samples, with their own targets.
    for rows, got, targets, kept in zip(dataset_rows(dm, after.steps), model.train_batches, model.train_targets,
                                        after.steps, strict=True):
        torch.testing.assert_close(got, rows)
        torch.testing.assert_close(targets, dm.train_dataset.tensors[1][torch.tensor(kept)])


def test_loss_baseline_keeps_the_highest_learner_losses():
    before, after = Record(), Record()
    fit([before, SALN(keep=0.5, method="loss"), after])
    for full, kept, x in zip(before.steps, after.steps, before.inputs, strict=True):
        top = torch.topk(x[:, 0], 8).indices.sort().values
        assert kept == [full[i] for i in top.tolist()]


def test_rho_loss_subtracts_the_cached_reference_loss():
    before, after, reference = Record(), Record(), Reference()
    fit([before, SALN(keep=0.5, method="rho_loss", reference=reference), after], max_steps=30)
    for full, kept, x in zip(before.steps, after.steps, before.inputs, strict=True):
        top = torch.topk(x[:, 0] - x[:, 1], 8).indices.sort().values
        assert kept == [full[i] for i in top.tolist()]
    # The reference scores each dataset index once: later batches read the cache.
    distinct = len({i for step in before.steps for i in step})
    assert reference.calls == distinct < sum(len(s) for s in before.steps)


def test_random_baseline_is_a_seeded_uniform_subset():
    runs = []
    for seed in (0, 0, 1):
        before, after = Record(), Record()
        fit([before, SALN(keep=0.5, method="random", seed=seed), after])
        assert all(len(k) == 8 and set(k) <= set(f) for f, k in zip(before.steps, after.steps, strict=True))
        runs.append(after.steps)
    assert runs[0] == runs[1] and runs[0] != runs[2]
    # Every position of the batch is kept about half the time (not, say, always the first half).
    positions = torch.zeros(16)
    for step in range(600):
        gen = torch.Generator().manual_seed(step)
        positions[select_top_k(torch.rand(16, generator=gen), 8)] += 1
    assert 0.4 < positions.min() / 600 and positions.max() / 600 < 0.6


def test_embed_and_feature_fn_sources():
    for features in ("embed", lambda module, batch: batch[0][:, :2] * 2.0):
        before, after = Record(), Record()
        model, _ = fit([before, SALN(keep=0.5, features=features), after], max_steps=3)
        for full, kept, x in zip(before.steps, after.steps, before.inputs, strict=True):
            if features == "embed":
                continue  # the weights moved between steps; the size and membership are what can be checked
            want = select_top_k(spectral_scores(x[:, :2]), 8)
            assert kept == [full[i] for i in want.tolist()]
        assert all(len(k) == 8 for k in after.steps)


def test_frozen_extractor_runs_once_per_index_in_eval_mode():
    extractor = CountingExtractor()
    extractor.train()
    before, after = Record(), Record()
    fit([before, SALN(keep=0.5, features=extractor), after], max_steps=30)
    distinct = len({i for step in before.steps for i in step})
    assert extractor.samples == distinct < 30 * 16
    assert not any(extractor.modes) and extractor.training  # ran in eval mode; its own mode is restored
    # The cached features are the extractor's features: selections match scoring them directly.
    with torch.no_grad():
        for full, kept, x in zip(before.steps, after.steps, before.inputs, strict=True):
            want = select_top_k(spectral_scores(extractor.proj(x)), 8)
            assert kept == [full[i] for i in want.tolist()]


def test_protected_groups_are_always_kept():
    dm = ToyData(sizes=SIZES)
    dm.setup("fit")
    rare = set(torch.nonzero(dm.group_counts[dm.train_group_ids] < 20).flatten().tolist())
    before, after = Record(), Record()
    fit([before, SALN(keep=0.25, protect_groups_below=20), after], strategy="upsample", temperature=5.0)
    hits = 0
    for full, kept in zip(before.steps, after.steps, strict=True):
        assert len(kept) == 4
        protected = [i for i in full if i in rare]
        hits += len(protected)
        if len(protected) <= 4:
            assert set(protected) <= set(kept)
        else:
            assert set(kept) <= set(protected)
    assert hits > 0


def test_labels_score_uses_the_group_ids():
    before, after = Record(), Record()
    _, dm = fit([before, SALN(keep=0.5, score="labels"), after], max_steps=4)
    for full, kept, x in zip(before.steps, after.steps, before.inputs, strict=True):
        labels = dm.train_group_ids[torch.tensor(full)]
        want = select_top_k(spectral_scores(x, score="labels", labels=labels), 8)
        assert kept == [full[i] for i in want.tolist()]


def test_keep_schedule_shrinks_the_batch_with_progress():
    schedule = LinearRamp(start=1.0, end=0.25)
    after = Record()
    fit([SALN(keep=schedule), after], max_steps=10)
    sizes = [len(s) for s in after.steps]
    assert sizes == [keep_count(resolve_keep(schedule, step / 10), 16) for step in range(10)]
    assert sizes[0] == 16 and sizes[-1] < 8


def test_degenerate_inputs_do_not_break_training():
    class Zeros(BalancedDataModule):
        def setup(self, stage=None):
            x = torch.zeros(64, 4)
            x[::2] = 1.0  # half all-zero rows, half duplicates
            self.train_dataset = TensorDataset(x, torch.arange(64) % 2)

    saln = SALN(keep=0.5)
    model = LossModel()
    trainer(max_steps=4, callbacks=[saln]).fit(model, Zeros(batch_size=16))
    assert [len(b) for b in model.train_batches] == [8] * 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_dict_batches_and_input_key():
    class DictData(Dataset):
        def __init__(self):
            self.x, self.y = torch.randn(64, 4), torch.arange(64) % 4
            self.targets = self.y

        def __len__(self):
            return 64

        def __getitem__(self, i):
            return {"image": self.x[i], "label": self.y[i], "meta": "text"}

    class DictModule(BalancedDataModule):
        def setup(self, stage=None):
            self.train_dataset = DictData()

    class DictModel(ToyModel):
        def training_step(self, batch, batch_idx):
            assert batch["image"].shape == (4, 4) and batch["label"].shape == (4,)
            return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    trainer(max_steps=2, callbacks=[SALN(keep=0.5, inputs="image")]).fit(DictModel(), DictModule(batch_size=8))
    with pytest.raises(ValueError, match="`inputs=0`.*dict"):
        trainer(max_steps=2, callbacks=[SALN(keep=0.5)]).fit(DictModel(), DictModule(batch_size=8))


# ---------------------------------------------------------------------------------------------- resume


def _resumable_run(tmp_path, saln, ckpt_path=None, save_every=None, max_steps=20):
    before, after = Record(), Record()
    callbacks = [before, saln, after]
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=save_every, save_top_k=-1))
    dm = ToyData(sizes=SIZES, batch_size=16, samples_per_epoch=96, seed=3)
    torch.manual_seed(0)
    trainer(max_steps=max_steps, callbacks=callbacks, enable_checkpointing=bool(save_every)).fit(
        LossModel(), dm, ckpt_path=ckpt_path
    )
    return before, after


@pytest.mark.parametrize(("method", "save_cache"), [
    ("random", False), ("spectral", True), ("spectral", False), ("jest", False), ("selective_backprop", False),
])
def test_resume_continues_the_selection(tmp_path, method, save_cache):
    def make():
        extractor = CountingExtractor()
        torch.manual_seed(1)
        extractor.proj.reset_parameters()
        extra = {"reference": Reference(), "n_chunks": 4} if method == "jest" else {}
        saln = SALN(keep=LinearRamp(1.0, 0.25), method=method, features=extractor, seed=5, save_cache=save_cache,
                    **extra)
        return saln, extractor

    saln, _ = make()
    full_before, full = _resumable_run(tmp_path, saln, save_every=9)
    checkpoint = glob.glob(os.path.join(tmp_path, "*step=9.ckpt"))[0]
    resumed_saln, extractor = make()
    resumed_before, resumed = _resumable_run(tmp_path / "resumed", resumed_saln, ckpt_path=checkpoint)
    assert resumed_before.steps == full_before.steps[9:]
    assert resumed.steps == full.steps[9:]
    assert resumed_saln.samples_seen == saln.samples_seen and resumed_saln.samples_kept == saln.samples_kept
    if method == "spectral":
        # With save_cache, indices scored before the checkpoint come from the restored cache and only new ones are
        # embedded; without it every index met after the resume is embedded again, and the selection is the same.
        # (The schedule keeps everything at the first steps, which are therefore not scored.)
        scored = [s for s in range(9) if keep_count(resolve_keep(LinearRamp(1.0, 0.25), s / 20), 16) < 16]
        assert scored[0] > 0
        scored_before = {i for s in scored for i in full_before.steps[s]}
        met = {i for step in resumed_before.steps for i in step}
        assert 0 < extractor.samples == len(met - scored_before if save_cache else met)


def test_caches_are_saved_only_when_asked(tmp_path):
    for save_cache in (False, True):
        out = tmp_path / str(save_cache)
        saln = SALN(keep=0.5, method="rho_loss", reference=Reference(), save_cache=save_cache)
        _resumable_run(out, saln, save_every=6, max_steps=6)
        state = torch.load(glob.glob(os.path.join(out, "*.ckpt"))[0], weights_only=False)["callbacks"]
        (saved,) = [v for k, v in state.items() if k.startswith("SALN")]
        assert ("reference_loss" in saved) == save_cache
        if save_cache:
            filled = saved["reference_loss"]["filled"]
            assert filled.sum() > 0 and saved["reference_loss"]["values"].device.type == "cpu"


def test_state_key_holds_the_configuration():
    a = SALN(keep=0.5)
    assert a.state_key == SALN(keep=0.5).state_key
    assert a.state_key != SALN(keep=0.25).state_key != SALN(keep=0.25, method="random").state_key
    assert "LinearRamp(start=1.0, end=0.5" in SALN(keep=LinearRamp(1.0, 0.5)).state_key
    assert "0x" not in SALN(keep=lambda p: 0.5, features=lambda m, b: b[0]).state_key


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("keep", [0, 0.0, -0.1, 1.5, float("nan"), True, "half"])
def test_keep_outside_unit_interval(keep):
    with pytest.raises(ValueError, match=r"`keep`.*\(0, 1\].*" + ("nan" if keep != keep else "")):
        SALN(keep=keep)


def test_bad_keep_schedule_fails_at_construction():
    with pytest.raises(ValueError, match="keep schedule .* returned 0.0 at progress 1.0"):
        SALN(keep=lambda p: 1.0 - p)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "gradnorm"}, "`method`.*'gradnorm'"),
    ({"method": "jest"}, "`reference` is None"),
    ({"method": "jest", "reference": Reference(), "n_chunks": 0}, r"`n_chunks`.*positive.*0"),
    ({"method": "jest", "reference": Reference(), "n_chunks": 9, "batch_size": 8}, r"`n_chunks`.*8 samples.*9"),
    ({"method": "selective_backprop", "beta": -1.0}, r"`beta`.*-1.0"),
    ({"batch_size": 0}, r"`batch_size`.*0"),
    ({"filter_ratio": 1.0}, r"`filter_ratio`.*\[0, 1\).*1.0"),
    ({"filter_ratio": -0.2}, r"`filter_ratio`.*\[0, 1\).*-0.2"),
    ({"keep": 0.5, "batch_size": 8}, r"keep=0.5 together with batch_size=8"),
    ({"solver": "arpack"}, r"`solver`.*'arpack'"),
    ({"features": "pixels"}, "`features`.*'pixels'"),
    ({"inputs": 1.5}, "`inputs`.*1.5"),
    ({"score": "fiedler"}, "`score`.*'fiedler'"),
    ({"protect_groups_below": 0}, "`protect_groups_below`.*0"),
    ({"method": "rho_loss"}, "`reference` is None"),
    ({"method": "rho_loss", "reference": nn.Linear(2, 2)}, "`reference`.*per_sample_loss.*Linear"),
    ({"select": "image"}, "`select`.*'image'"),
    ({"select": []}, r"`select`.*\[\]"),
    ({"select": (0, 1.5)}, r"`select`.*1.5"),
    ({"select": (True,)}, r"`select`.*True"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SALN(**kwargs)


def test_needs_a_balanced_datamodule():
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.arange(32) % 4), batch_size=8)
    with pytest.raises(MisconfigurationException, match="BalancedDataModule.*datamodule=dm"):
        trainer(max_steps=1, callbacks=[SALN()]).fit(ToyModel(), train_dataloaders=loader)


@pytest.mark.parametrize(("kwargs", "hook"), [
    ({"method": "loss"}, "per_sample_loss"),
    ({"features": "embed"}, "embed"),
])
def test_missing_module_hook(kwargs, hook):
    with pytest.raises(MisconfigurationException, match=f"ToyModel.{hook}"):
        trainer(max_steps=1, callbacks=[SALN(**kwargs)]).fit(ToyModel(), ToyData(batch_size=8))


def test_extractor_output_must_be_b_by_d():
    with pytest.raises(ValueError, match=r"`features` \(CountingExtractor\).*\[16, D\].*\(16, 3, 1\)"):
        fit([SALN(features=CountingExtractor(out_shape=(3, 1)))], max_steps=1)


def test_schedule_needs_a_training_length():
    with pytest.raises(MisconfigurationException, match="max_steps"):
        trainer(max_epochs=-1, max_steps=-1, max_time={"seconds": 5}, callbacks=[SALN(keep=LinearRamp(1.0, 0.5))]).fit(
            LossModel(), ToyData(batch_size=8)
        )


def test_keep_count_is_exact_and_rank_independent():
    for b in range(1, 65):
        for keep in (0.1, 0.25, 1 / 3, 0.5, 0.9, 1.0):
            k = keep_count(keep, b)
            assert 1 <= k <= b and k == max(1, math.ceil(round(keep * b, 9)))


def test_select_top_k_matches_a_brute_force_ranking():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        b = int(torch.randint(1, 20, (1,), generator=gen))
        k = int(torch.randint(0, b + 1, (1,), generator=gen))
        scores = torch.randint(0, 4, (b,), generator=gen).float()  # many ties
        protected = torch.rand(b, generator=gen) < 0.3
        # Reference: protected first, then higher score, then earlier position.
        ranked = sorted(range(b), key=lambda i: (not protected[i], -scores[i], i))
        assert select_top_k(scores, k, protected=protected).tolist() == sorted(ranked[:k])
        # With a generator, ties are broken at random but the kept scores are the same multiset.
        g = torch.Generator().manual_seed(1)
        kept = select_top_k(scores, k, protected=protected, generator=g)
        want = torch.tensor(ranked[:k], dtype=torch.long)
        assert sorted(scores[kept].tolist()) == sorted(scores[want].tolist())
        assert protected[kept].sum() == min(k, int(protected.sum()))


# ---------------------------------------------------------------------------------------------- RHO-LOSS naming


def test_learnability_is_a_deprecated_alias_of_rho_loss():
    with pytest.warns(DeprecationWarning, match="method='rho_loss'"):
        old = SALN(keep=0.5, method="learnability", reference=Reference())
    assert old.method == "rho_loss"
    # Old checkpoints keep their state key; the selection is the same.
    assert "'method': 'learnability'" in old.state_key
    runs = []
    for saln in (old, SALN(keep=0.5, method="rho_loss", reference=Reference())):
        after = Record()
        fit([saln, after], max_steps=4)
        runs.append(after.steps)
    assert runs[0] == runs[1]


def test_numpy_scalars_are_accepted():
    after = Record()
    fit([SALN(keep=np.float32(0.25), protect_groups_below=np.int64(20), seed=np.int64(3)), after], max_steps=2)
    assert [len(s) for s in after.steps] == [4, 4]


# ---------------------------------------------------------------------------------------------- what is cut

B, C = 16, 16  # a table over the C classes of a batch that happens to hold C samples


class PairwiseData(ToyData):
    """Batches `(x, y, mask, table)`: a [B, B] mask over the batch and a [C] table, not per-sample."""

    def __init__(self, extra="pairwise", **kwargs) -> None:
        super().__init__(batch_size=B, samples_per_epoch=96, **kwargs)
        self.collate_fn = self._collate
        self.extra = extra

    def _collate(self, samples):
        x, y = default_collate(samples)
        if self.extra == "pairwise":
            return x, y, (y[:, None] == y[None, :]), torch.arange(C) * 10
        if self.extra == "time_first":
            return x, y, x.T.clone()  # [4, B]
        return x, y, torch.arange(10)  # a [10] table


class PairwiseModel(LossModel):
    def __init__(self) -> None:
        super().__init__()
        self.extras: list = []

    def training_step(self, batch, batch_idx):
        self.extras.append([t.clone() for t in batch[2:]])
        return super().training_step(batch[:2], batch_idx)


def test_select_positions_cut_only_the_per_sample_entries():
    before, after, model = Record(), Record(), PairwiseModel()
    fit([before, SALN(keep=0.5, select=(0, 1)), after], model=model, max_steps=3, data=PairwiseData())
    for x, kept, (mask, table) in zip(model.train_batches, after.steps, model.extras, strict=True):
        assert x.shape == (8, 4) and len(kept) == 8
        assert mask.shape == (B, B)  # passed on whole
        torch.testing.assert_close(table, torch.arange(C) * 10)


def test_select_callable_cuts_a_pairwise_mask_on_both_dimensions():
    def select(batch, keep):
        x, y, mask, table = batch
        return x[keep], y[keep], mask[keep][:, keep], table

    before, after, model = Record(), Record(), PairwiseModel()
    fit([before, SALN(keep=0.5, select=select), after], model=model, max_steps=3, data=PairwiseData())
    for y, (mask, table) in zip(model.train_targets, model.extras, strict=True):
        torch.testing.assert_close(mask, y[:, None] == y[None, :])  # the mask of the kept samples
        torch.testing.assert_close(table, torch.arange(C) * 10)


def test_select_keys_of_a_dict_batch():
    class DictData(ToyData):
        def __init__(self):
            super().__init__(batch_size=B, samples_per_epoch=96)
            self.collate_fn = lambda samples: {
                "x": default_collate(samples)[0], "y": default_collate(samples)[1], "table": torch.arange(C)
            }

    class DictModel(ToyModel):
        def training_step(self, batch, batch_idx):
            assert batch["x"].shape == (8, 4) and batch["y"].shape == (8,) and batch["table"].shape == (C,)
            return nn.functional.cross_entropy(self(batch["x"]), batch["y"])

    fit([SALN(keep=0.5, inputs="x", select=["x", "y"])], model=DictModel(), max_steps=2, data=DictData())
    with pytest.raises(ValueError, match=r"`select`.*\['label'\].*\['x', 'y', 'table'\]"):
        fit([SALN(keep=0.5, inputs="x", select=["x", "label"])], model=DictModel(), max_steps=1, data=DictData())


def test_select_refuses_an_entry_that_is_not_per_sample():
    with pytest.raises(ValueError, match=r"batch\[2\] as per-sample.*batch size 16.*\(4, 16\)"):
        fit([SALN(keep=0.5, select=(0, 1, 2))], model=PairwiseModel(), max_steps=1, data=PairwiseData("time_first"))


def test_default_refuses_a_square_tensor_that_is_not_the_input():
    # Before `select` existed the [B, B] mask was cut to [k, B] and the [C] table to [k], silently.
    with pytest.raises(ValueError, match=r"batch\[2\] of shape \(16, 16\) is \[B, B, \.\.\.\].*SALN\(select=\.\.\.\)"):
        fit([SALN(keep=0.5)], model=PairwiseModel(), max_steps=1, data=PairwiseData())


def test_default_refuses_a_time_first_tensor():
    with pytest.raises(ValueError, match=r"batch\[2\] of shape \(4, 16\).*second dimension.*select="):
        fit([SALN(keep=0.5)], model=PairwiseModel(), max_steps=1, data=PairwiseData("time_first"))


def test_default_warns_once_about_a_tensor_that_is_not_per_sample():
    model = PairwiseModel()
    with pytest.warns(UserWarning, match=r"batch\[2\] of shape \(10,\) is not per-sample.*select=") as record:
        fit([SALN(keep=0.5)], model=model, max_steps=3, data=PairwiseData("table"))
    assert sum("is not per-sample" in str(w.message) for w in record) == 1
    assert all(table.shape == (10,) for (table,) in model.extras)


def test_default_accepts_square_inputs():
    # Inputs with as many features as samples are still one row per sample: no error, no warning.
    class Square(BalancedDataModule):
        def setup(self, stage=None):
            self.train_dataset = TensorDataset(torch.randn(64, 16), torch.arange(64) % 4)

    class SquareModel(LossModel):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(16, 4)

    model = SquareModel()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*SALN.*")
        trainer(max_steps=2, callbacks=[SALN(keep=0.5)]).fit(model, Square(batch_size=16))
    assert [tuple(b.shape) for b in model.train_batches] == [(8, 16)] * 2


# ---------------------------------------------------------------------------------------------- precision


class AutocastRecorder(nn.Module):
    """A frozen extractor (and reference) that records whether it ran under CPU autocast and its output dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.autocast: list[bool] = []
        self.dtypes: list[torch.dtype] = []

    def forward(self, x):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        out = self.proj(x)
        self.dtypes.append(out.dtype)
        return out

    def per_sample_loss(self, batch):
        return self(batch[0])[:, 0]


class AutocastModel(LossModel):
    def __init__(self) -> None:
        super().__init__()
        self.autocast: list[bool] = []

    def per_sample_loss(self, batch):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.layer(batch[0])[:, 0]

    def embed(self, batch):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.layer(batch[0])


@pytest.mark.parametrize("source", ["extractor", "embed", "feature_fn", "loss", "rho_loss"])
def test_scoring_forwards_run_under_the_trainers_autocast(source):
    recorder, model = AutocastRecorder(), AutocastModel()
    seen: list[bool] = []

    def feature_fn(module, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return module.layer(batch[0])

    kwargs = {
        "extractor": {"features": recorder},
        "embed": {"features": "embed"},
        "feature_fn": {"features": feature_fn},
        "loss": {"method": "loss"},
        "rho_loss": {"method": "rho_loss", "reference": recorder},
    }[source]
    dm = ToyData(sizes=SIZES, batch_size=16, samples_per_epoch=96)
    trainer(max_steps=3, precision="bf16-mixed", callbacks=[SALN(keep=0.5, **kwargs)]).fit(model, dm)
    flags = recorder.autocast + model.autocast + seen
    assert flags and all(flags)
    if recorder.dtypes:
        assert set(recorder.dtypes) == {torch.bfloat16}
    # Nothing leaks out of the context: the scores themselves are computed after it closes.
    assert not torch.is_autocast_enabled("cpu")


# ---------------------------------------------------------------------------------------------- drawn baselines


def test_jest_and_selective_backprop_draw_as_the_functions_do():
    """The callback's draw is the functional one with the generator of (seed, batch index, rank)."""
    for method, extra in (("jest", {"reference": Reference(), "n_chunks": 4}), ("selective_backprop", {})):
        before, after = Record(), Record()
        saln = SALN(keep=0.5, method=method, seed=3, **extra)
        fit([before, saln, after], max_steps=6)
        for step, (full, kept, x) in enumerate(zip(before.steps, after.steps, before.inputs, strict=True)):
            gen = saln._generator(torch.device("cpu"), step, 0)
            if method == "jest":
                want = jest_select(x[:, 0] - x[:, 1], 8, n_chunks=4, generator=gen)
            else:
                want = selective_backprop_select(x[:, 0], 8, generator=gen)
            assert kept == [full[i] for i in want.tolist()], (method, step)


def test_draws_depend_on_the_seed_and_step_only():
    runs = []
    for seed in (0, 0, 1):
        after = Record()
        fit([SALN(keep=0.5, method="selective_backprop", seed=seed), after], max_steps=5)
        runs.append(after.steps)
    assert runs[0] == runs[1] != runs[2]


def test_reference_that_does_not_match_the_learner():
    class WrongClasses(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 2)  # two classes; the learner's targets go up to 3

        def per_sample_loss(self, batch):
            return nn.functional.cross_entropy(self.layer(batch[0]), batch[1], reduction="none")

    class PerBatch(nn.Module):
        def per_sample_loss(self, batch):
            return batch[0].sum()  # one loss for the whole batch

    with pytest.raises(ValueError, match=r"`reference` model \(WrongClasses\) failed on the learner's batch"):
        fit([SALN(keep=0.5, method="jest", reference=WrongClasses(), n_chunks=2)], max_steps=1)
    with pytest.raises(ValueError, match=r"`reference` to return one loss per sample, shape \[16\].*\(\)"):
        fit([SALN(keep=0.5, method="rho_loss", reference=PerBatch())], max_steps=1)


# ---------------------------------------------------------------------------------------------- super-batch


@pytest.mark.parametrize(("kwargs", "kept"), [
    ({"batch_size": 6}, 6), ({"filter_ratio": 0.75}, 4), ({"batch_size": 4, "filter_ratio": 0.75}, 4),
    ({"filter_ratio": 0.0}, 16),
])
def test_super_batch_selection_trains_on_b_of_each_batch(kwargs, kept):
    before, after = Record(), Record()
    model, _ = fit([before, SALN(method="loss", **kwargs), after], max_steps=4)
    assert [len(s) for s in before.steps] == [16] * 4
    assert [len(b) for b in model.train_batches] == [kept] * 4
    for full, got, x in zip(before.steps, after.steps, before.inputs, strict=True):
        top = torch.topk(x[:, 0], kept).indices.sort().values
        assert got == [full[i] for i in top.tolist()]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"batch_size": 32}, r"SALN\(batch_size=32\).*super-batch B\) is 16: B < b.*batch_size=\.\.\.\).*64"),
    ({"batch_size": 8, "filter_ratio": 0.8}, r"needs a super-batch of 40.*batch is 16.*batch_size=40"),
    ({"batch_size": 4, "method": "jest", "n_chunks": 5}, r"`n_chunks`.*4 samples.*5"),
    ({"filter_ratio": 0.9, "method": "jest", "n_chunks": 3}, r"`n_chunks`.*2 samples kept per super-batch.*3"),
    ({"keep": 0.25, "method": "jest", "n_chunks": 5}, r"`n_chunks`.*4 samples kept per batch \(keep=0.25 of 16\).*5"),
])
def test_super_batch_the_datamodule_cannot_provide(kwargs, match):
    if kwargs.get("method") == "jest":
        kwargs = {**kwargs, "reference": Reference()}
        if kwargs["n_chunks"] > kwargs.get("batch_size", 99):
            with pytest.raises(ValueError, match=match):
                SALN(**kwargs)
            return
    with pytest.raises(MisconfigurationException, match=match):
        fit([SALN(**kwargs)], max_steps=1)


def test_super_batch_needs_a_balanced_datamodule():
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.arange(32) % 4), batch_size=8)
    with pytest.raises(MisconfigurationException, match="Super-batch selection.*DataModule's batch as the super-batch"):
        trainer(max_steps=1, callbacks=[SALN(batch_size=4)]).fit(ToyModel(), train_dataloaders=loader)


def test_super_batch_smaller_than_b_at_run_time():
    class Short(ToyData):
        def train_dataloader(self):
            loader = super().train_dataloader()
            return DataLoader(loader.dataset, batch_size=3, sampler=loader.sampler, collate_fn=loader.collate_fn,
                              drop_last=True)

    with pytest.raises(ValueError, match=r"SALN\(batch_size=6\).*got a batch of 3.*BalancedDataModule\(batch_size=B\)"):
        fit([SALN(batch_size=6)], max_steps=1, data=Short(sizes=SIZES, batch_size=16, samples_per_epoch=96))


# ---------------------------------------------------------------------------------------------- caches


def test_caches_live_on_the_host_and_in_a_memmap(tmp_path):
    runs = []
    for cache_dir in (None, str(tmp_path / "cache")):
        extractor = CountingExtractor()
        torch.manual_seed(1)
        extractor.proj.reset_parameters()
        after = Record()
        saln = SALN(keep=0.5, features=extractor, cache_dir=cache_dir)
        fit([saln, after], max_steps=8)
        values = saln._feature_cache.values
        assert values.device.type == "cpu" and values.shape == (len(saln._feature_cache.filled), 3)
        if cache_dir is not None:
            assert os.path.exists(os.path.join(cache_dir, "features.npy"))
            on_disk = np.load(os.path.join(cache_dir, "features.npy"), mmap_mode="r")
            np.testing.assert_array_equal(on_disk, values.numpy())
        runs.append(after.steps)
    assert runs[0] == runs[1]


# ---------------------------------------------------------------------------------------------- no host reads


class HostRead(AssertionError):
    pass


_HOST_READS = {
    torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
    torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.nonzero, torch.nonzero,
    torch.Tensor.unique, torch.unique, torch.masked_select, torch.Tensor.masked_select, torch.Tensor.__repr__,
}


class OnDevice(torch.Tensor):
    """A CPU tensor standing for one on a GPU: every operation that would read its values on the host raises
    (and so does anything computed from it, which stays an OnDevice)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _HOST_READS:
            raise HostRead(f"{getattr(func, '__name__', func)} read a device tensor on the host")
        if func is torch.Tensor.__getitem__ and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool:
            raise HostRead("boolean-mask indexing reads a device tensor on the host")
        return super().__torch_function__(func, types, args, kwargs or {})


class ToDevice(pl.Callback):
    def transform_train_batch(self, trainer, pl_module, batch, indices):
        return [t.as_subclass(OnDevice) for t in batch], indices


class FromDevice(pl.Callback):
    def __init__(self, flagged):
        self.flagged = flagged
        self.steps = []

    def transform_train_batch(self, trainer, pl_module, batch, indices):
        # The kept indices were computed from device tensors (a random draw's come from torch.rand, not flagged).
        assert isinstance(indices, OnDevice) == self.flagged or trainer.callbacks[1].method == "random"
        plain = indices.as_subclass(torch.Tensor)
        self.steps.append(plain.tolist())
        return [t.as_subclass(torch.Tensor) for t in batch], plain


def test_on_device_flags_host_reads():
    x = torch.ones(3).as_subclass(OnDevice)
    for read in (lambda: x.sum().item(), lambda: bool(x.any()), lambda: x.tolist(), lambda: x[x > 0],
                 lambda: torch.nonzero(x), lambda: int(x[0])):
        with pytest.raises(HostRead):
            read()
    assert isinstance(torch.topk(x * 2, 2).indices, OnDevice)


@pytest.mark.parametrize("config", [
    {"method": "spectral"}, {"method": "spectral", "features": "frozen", "protect_groups_below": 20},
    {"method": "spectral", "score": "labels"}, {"method": "random"}, {"method": "loss"},
    {"method": "selective_backprop", "protect_groups_below": 20}, {"method": "rho_loss"}, {"method": "jest"},
    {"batch_size": 5, "method": "jest"},
])
def test_the_step_reads_no_device_tensor_on_the_host(monkeypatch, config):
    """What runs on a GPU, run on CPU tensors that raise on every host read: the step must never read one.

    The code takes its device branches (device-side asserts, eigh rather than an iterative solver with a host
    convergence check) where `_host_reads_free` is False, which is what it is on a GPU."""
    import lightning_balance.callbacks.saln as saln_module
    import lightning_balance.functional.fiedler as fiedler_module
    import lightning_balance.functional.spectral as spectral_module

    monkeypatch.setattr(fiedler_module, "_host_reads_free", lambda device: False)
    monkeypatch.setattr(spectral_module, "_host_reads_free", lambda device: False)
    to_device = saln_module._to_device
    runs = []
    for flagged in (False, True):
        # What the host tables (caches, protected samples, labels) send to the device is device data too.
        monkeypatch.setattr(saln_module, "_to_device",
                            (lambda t, d: to_device(t, d).as_subclass(OnDevice)) if flagged else to_device)
        kwargs = dict(config)
        if kwargs.get("features") == "frozen":
            extractor = CountingExtractor()
            torch.manual_seed(2)
            extractor.proj.reset_parameters()
            kwargs["features"] = extractor
        if kwargs["method"] in ("rho_loss", "jest"):
            kwargs["reference"] = Reference()
        if kwargs["method"] == "jest":
            kwargs["n_chunks"] = 4
        if "batch_size" not in kwargs:
            kwargs["keep"] = 0.5
        record = FromDevice(flagged)
        callbacks = [ToDevice(), SALN(**kwargs), record] if flagged else [SALN(**kwargs), record]
        fit(callbacks, max_steps=4)
        runs.append(record.steps)
    assert runs[0] == runs[1] and all(len(s) < 16 for s in runs[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["random", "loss", "selective_backprop", "rho_loss", "jest", "spectral"])
def test_cuda_step_does_not_synchronise(method):
    """`torch.cuda.set_sync_debug_mode` around SALN's step. torch.linalg.eigh reads its own error codes on the
    host, so the spectral step may synchronise once, inside eigh; nothing else may."""
    class Guarded(SALN):
        syncs = 0

        def transform_train_batch(self, trainer, pl_module, batch, indices):
            mode = "warn" if self.method == "spectral" else "error"
            torch.cuda.set_sync_debug_mode(mode)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    out = super().transform_train_batch(trainer, pl_module, batch, indices)
                Guarded.syncs = max(Guarded.syncs, sum("synchroniz" in str(w.message) for w in caught))
                return out
            finally:
                torch.cuda.set_sync_debug_mode("default")

    extra = {"reference": Reference(), "n_chunks": 4} if method in ("rho_loss", "jest") else {}
    saln = Guarded(keep=0.5, method=method, protect_groups_below=20, **extra)
    dm = ToyData(sizes=SIZES, batch_size=16, samples_per_epoch=96)
    trainer(max_steps=6, accelerator="cuda", callbacks=[saln]).fit(LossModel(), dm)
    assert Guarded.syncs <= (1 if method == "spectral" else 0)
