"""One dataset per group, on disk: Hugging Face ``datasets`` and LitData shards as ``train_sources``.

The datasets are written to ``tmp_path`` by the libraries themselves (``save_to_disk``, ``litdata.optimize``) and
read back as a trainer would; nothing is downloaded.
"""

import functools
import glob
import json
import os
import subprocess
import sys

# LitData asks PyPI for a newer release when a dataset is built or written; the tests run offline.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from lightning_balance import BalancedDataModule, Cooldown, Mixture  # noqa: E402
from lightning_balance.sources import LitDataSource, map_style, map_style_sources  # noqa: E402
from tests.helpers import ToyModel, trainer  # noqa: E402

SIZES = {"en": 120, "sw": 24, "yo": 7}
NAMES = list(SIZES)
SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "sources_ddp.py")


def _item(group: int, i: int) -> dict:
    return {"group": group, "id": i, "x": [float(group), float(i % 5)]}


def collate(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dict items into ``(x, group, id)`` tensors; the group is the label the model predicts."""
    x = torch.tensor([item["x"] for item in items], dtype=torch.float32)
    group = torch.tensor([int(item["group"]) for item in items])
    ids = torch.tensor([int(item["id"]) for item in items])
    return x, group, ids


class SourcesData(BalancedDataModule):
    def __init__(self, make_sources, **kwargs) -> None:
        super().__init__(**kwargs)
        self.make_sources = make_sources
        self.collate_fn = collate

    def setup(self, stage=None) -> None:
        self.train_sources = self.make_sources()


class RecordItems(pl.Callback):
    """A callback: the dataset index, group and id of every sample the training steps received."""

    def __init__(self) -> None:
        self.steps: list[list[int]] = []
        self.items: list[list[tuple[int, int]]] = []
        self.temperatures: list[float] = []

    def transform_train_batch(self, trainer, pl_module, batch, indices):
        self.steps.append(indices.cpu().tolist())
        self.items.append(list(zip(batch[1].tolist(), batch[2].tolist(), strict=True)))
        self.temperatures.append(trainer.datamodule.current_temperature())
        return batch, indices


def _fit(dm, max_steps, callbacks=(), ckpt_path=None, **kwargs):
    recorder = RecordItems()
    torch.manual_seed(0)
    trainer(max_steps=max_steps, callbacks=[recorder, *callbacks], **kwargs).fit(
        ToyModel(num_features=2, num_classes=len(SIZES)), dm, ckpt_path=ckpt_path
    )
    return recorder


# ---------------------------------------------------------------------- building the sources on disk
def _hf_sources(root) -> dict:
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    for g, (name, n) in enumerate(SIZES.items()):
        path = os.path.join(root, name)
        if not os.path.exists(path):
            items = [_item(g, i) for i in range(n)]
            datasets.Dataset.from_dict({key: [item[key] for item in items] for key in items[0]}).save_to_disk(path)
    return {name: datasets.load_from_disk(os.path.join(root, name)) for name in SIZES}


def _write_litdata(root) -> None:
    litdata = pytest.importorskip("litdata")
    for g, (name, n) in enumerate(SIZES.items()):
        path = os.path.join(root, name)
        if not os.path.exists(os.path.join(path, "index.json")):
            # fork: a spawned writer re-imports torch, seconds per group.
            litdata.optimize(fn=functools.partial(_item, g), inputs=list(range(n)), output_dir=path,
                             chunk_bytes="64KB", num_workers=1, start_method="fork", verbose=False)


def _litdata_sources(root) -> dict:
    litdata = pytest.importorskip("litdata")
    _write_litdata(root)
    return map_style_sources({name: litdata.StreamingDataset(os.path.join(root, name)) for name in SIZES})


@pytest.fixture
def hf_dir(tmp_path):
    root = tmp_path / "hf"
    _hf_sources(root)
    return root


@pytest.fixture
def litdata_dir(tmp_path):
    root = tmp_path / "litdata"
    _write_litdata(root)
    return root


def _check_items(recorder, sources) -> np.ndarray:
    """Every recorded sample is the source item its index names; returns the recorded indices."""
    sizes = np.array([len(sources[name]) for name in NAMES])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for indices, items in zip(recorder.steps, recorder.items, strict=True):
        for index, (group, item_id) in zip(indices, items, strict=True):
            g = int(np.searchsorted(offsets, index, side="right") - 1)
            assert g == group
            source_item = sources[NAMES[g]][index - int(offsets[g])]
            assert (int(source_item["group"]), int(source_item["id"])) == (group, item_id)
    return np.array([i for step in recorder.steps for i in step])


def _check_uniform(recorder, dm, sizes) -> None:
    from scipy.stats import chisquare  # imported here: the DDP script imports this module

    groups = np.array([group for step in recorder.items for group, _ in step])
    counts = np.bincount(groups, minlength=len(sizes))
    assert chisquare(counts, np.full(len(sizes), len(groups) / len(sizes))).pvalue > 1e-4
    # The stratified order keeps every prefix within a few draws of its quota.
    assert np.abs(counts - len(groups) / len(sizes)).max() <= 3
    torch.testing.assert_close(dm.epochs_per_group(), torch.from_numpy(counts / np.asarray(sizes)).double())


# ---------------------------------------------------------------------- Hugging Face datasets
def test_hf_datasets_from_disk_train_as_sources(hf_dir):
    datasets = pytest.importorskip("datasets")
    sources = _hf_sources(hf_dir)
    assert all(isinstance(source, datasets.Dataset) and map_style(source) is source for source in sources.values())
    dm = SourcesData(lambda: _hf_sources(hf_dir), strategy="upsample", temperature=float("inf"), batch_size=12,
                     samples_per_epoch=120, seed=3)
    recorder = _fit(dm, max_steps=25)
    assert len(recorder.steps) == 25
    assert dm.group_names == NAMES and dm.group_counts.tolist() == list(SIZES.values())
    _check_items(recorder, sources)
    _check_uniform(recorder, dm, list(SIZES.values()))
    # 100 draws of the 7 "yo" examples: every example of a pass before any repeats.
    yo = [item_id for step in recorder.items for group, item_id in step if group == 2]
    for start in range(0, len(yo) - 6, 7):
        assert sorted(yo[start : start + 7]) == list(range(7))


# ---------------------------------------------------------------------- LitData
def test_litdata_streaming_dataset_length_is_per_rank_and_the_source_is_not(litdata_dir, monkeypatch):
    import litdata

    path = os.path.join(litdata_dir, "yo")
    assert len(litdata.StreamingDataset(path)) == 7
    monkeypatch.setenv("WORLD_SIZE", "2")  # what litdata reads for the process group it runs in
    raw = litdata.StreamingDataset(path)
    # Its length is this rank's share of an iteration, remainder dropped; random access stays global.
    assert len(raw) == 3 and int(raw[6]["id"]) in range(7)
    source = map_style(raw)
    assert isinstance(source, LitDataSource) and map_style(source) is source
    assert len(source) == 7
    assert sorted(int(source[i]["id"]) for i in range(7)) == list(range(7))
    assert int(source[np.int64(2)]["id"]) == int(raw[2]["id"])  # litdata itself refuses numpy integers
    with pytest.raises(IndexError, match="out of range"):
        source[7]


def test_map_style_refuses_streams():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(3))

    with pytest.raises(TypeError, match="one map-style dataset per group"):
        map_style(Stream())
    with pytest.raises(TypeError, match="map-style"):
        map_style(object())


def test_litdata_shards_train_as_sources(litdata_dir):
    sources = _litdata_sources(litdata_dir)
    # One DataLoader worker: the sources are read in another process.
    dm = SourcesData(lambda: _litdata_sources(litdata_dir), strategy="upsample", temperature=float("inf"),
                     batch_size=12, samples_per_epoch=120, seed=3, num_workers=1)
    recorder = _fit(dm, max_steps=25)
    assert len(recorder.steps) == 25
    assert dm.group_counts.tolist() == list(SIZES.values())
    _check_items(recorder, sources)
    _check_uniform(recorder, dm, list(SIZES.values()))


# ---------------------------------------------------------------------- nothing per example
class VirtualSource(torch.utils.data.Dataset):
    """``n`` items made on demand: a group of any size costs nothing until an item is read."""

    def __init__(self, group: int, n: int) -> None:
        self.group, self.n = group, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        assert 0 <= i < self.n
        return _item(self.group, i)


def test_sources_of_ten_billion_examples_train_without_per_example_memory():
    # 1.1e10 examples: one int per example would be 88 GB, so any per-example table fails here.
    sources = {name: VirtualSource(g, n) for g, (name, n) in enumerate({"en": 10**10, "sw": 10**9, "yo": 7}.items())}
    dm = SourcesData(lambda: sources, strategy="upsample", temperature=float("inf"), batch_size=12,
                     samples_per_epoch=120, seed=3)
    recorder = _fit(dm, max_steps=6)
    indices = _check_items(recorder, sources)
    assert len(indices) == 72 and indices.max() >= 2**32
    assert dm.epochs_per_group().tolist() == [24 / 10**10, 24 / 10**9, 24 / 7]


def test_a_train_dataset_with_group_ids_keeps_an_index_entry_and_a_group_id_per_example():
    # What docs/scale.md says the other way of giving groups costs: 4 + 8 bytes per example.
    class Grouped(torch.utils.data.TensorDataset):
        pass

    ids = torch.tensor([0] * 90 + [1] * 10)
    dataset = Grouped(torch.randn(100, 2))
    dataset.groups = ids

    class Data(BalancedDataModule):
        def setup(self, stage=None):
            self.train_dataset = dataset

    dm = Data(strategy="upsample", temperature=float("inf"), batch_size=10)
    dm.setup("fit")
    dm.train_dataloader()
    assert dm.group_index.order.dtype == torch.int32 and len(dm.group_index.order) == 100
    assert dm.train_group_ids.dtype == torch.int64 and len(dm.train_group_ids) == 100


# ---------------------------------------------------------------------- the stream, and a resume of it
@pytest.mark.parametrize("kind", ["litdata", "hf"])
def test_sources_stream_is_the_mixture_and_resumes_exactly(tmp_path, kind):
    make = {"litdata": _litdata_sources, "hf": _hf_sources}[kind]
    root = tmp_path / kind
    sources = make(root)
    steps, batch, seed, schedule = 24, 8, 5, Cooldown(5.0, 1.0, 0.5)

    def datamodule():
        return SourcesData(lambda: make(root), strategy="upsample", temperature=schedule, batch_size=batch,
                           samples_per_epoch=64, seed=seed)

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=9, save_top_k=-1)
    full = _fit(datamodule(), steps, callbacks=[saver], enable_checkpointing=True)
    # An independent reference: the mixture over the sources' sizes, its global indices split by the offsets.
    sizes = [len(sources[name]) for name in NAMES]
    reference = Mixture(sizes, schedule, seed=seed, step_size=batch, total_steps=steps).indices(0, steps * batch)
    recorded = _check_items(full, sources)
    assert recorded.tolist() == reference.tolist()
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    groups = np.searchsorted(offsets, reference.numpy(), side="right") - 1
    assert groups.tolist() == [group for step in full.items for group, _ in step]
    assert full.temperatures.index(1.0) == steps // 2
    # Across the switch every group's draws run through whole passes: n_g draws in a row are n_g distinct items.
    yo = reference.numpy()[groups == 2]
    assert len(yo) >= 3 * 7  # several passes over the 7 "yo" examples, most of them before the switch
    for g, n in enumerate(sizes):
        local = reference.numpy()[groups == g] - offsets[g]
        for start in range(0, len(local), n):
            block = local[start : start + n]
            assert len(set(block.tolist())) == len(block)

    checkpoint = glob.glob(str(tmp_path / "ckpt" / "*step=9.ckpt"))
    assert len(checkpoint) == 1
    resumed = _fit(datamodule(), steps, ckpt_path=checkpoint[0])
    assert resumed.steps == full.steps[9:]
    assert resumed.items == full.items[9:]
    assert resumed.temperatures == full.temperatures[9:]


# ---------------------------------------------------------------------- DDP
def _launch(out, data, devices, batch_size):
    out.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, SCRIPT, "--data", str(data), "--out", str(out), "--devices", str(devices),
         "--batch-size", str(batch_size)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.load(open(out / f"rank{r}.json")) for r in range(devices)]


@pytest.mark.ddp
def test_ddp_ranks_split_the_single_process_batches_of_litdata_sources(tmp_path, litdata_dir):
    ranks = _launch(tmp_path / "ddp", litdata_dir, devices=2, batch_size=6)
    (single,) = _launch(tmp_path / "single", litdata_dir, devices=1, batch_size=12)
    for rank in ranks:
        assert rank["world_size"] == 2
        # Every rank sees the whole of every group, not its share of a LitData iteration.
        assert rank["group_counts"] == list(SIZES.values())
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == len(single["steps"]) == 16
    for step, global_batch in enumerate(single["steps"]):
        assert sorted(ranks[0]["steps"][step] + ranks[1]["steps"][step]) == sorted(global_batch)
        # Rank r holds the positions r, r + 2, ... of the global batch.
        assert ranks[0]["steps"][step] == global_batch[0::2] and ranks[1]["steps"][step] == global_batch[1::2]
        assert sorted(map(tuple, ranks[0]["items"][step] + ranks[1]["items"][step])) == sorted(
            map(tuple, single["items"][step])
        )
    assert ranks[0]["temperatures"] == ranks[1]["temperatures"] == single["temperatures"]
    assert single["temperatures"].index(1.0) == 8
