"""MixtureMonitor logs the stream's temperature, probabilities and epochs per group."""

import csv
import glob

import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_balance import Cooldown, MixtureMonitor
from tests.helpers import ToyData, ToyModel, trainer


def test_epochs_and_probabilities_are_logged(tmp_path):
    dm = ToyData(strategy="upsample", temperature=Cooldown(float("inf"), 1.0, 0.5), batch_size=8)
    logger = CSVLogger(tmp_path, name="run")
    trainer(max_steps=20, callbacks=[MixtureMonitor(every_n_steps=5)], logger=logger).fit(ToyModel(), dm)
    logger.save()
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "run" / "*" / "metrics.csv"))[0])))
    logged = [r for r in rows if r.get("mixing/temperature")]
    assert [float(r["mixing/temperature"]) for r in logged] == [float("inf")] * 1 + [1.0] * 3
    last = logged[-1]
    # 20 steps x 8 samples: 10 steps at T=inf (40 draws per group), then 10 at T=1 (80 draws, 300/376 of them head).
    mixture = dm.mixture()
    epochs = mixture.epochs(160)
    assert float(last["mixing/epochs_3"]) == pytest.approx(float(epochs[3]))
    assert float(last["mixing/epochs_3"]) > 5  # the 4-example tail group was gone through many times
    assert float(last["mixing/p_0"]) == pytest.approx(300 / 376, abs=1e-6)


def test_bad_period():
    with pytest.raises(ValueError, match="every_n_steps"):
        MixtureMonitor(every_n_steps=0)
