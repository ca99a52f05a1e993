"""The training reference in the artifact: written by training, checked at load, optional."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chargecast.model import reference
from chargecast.model.artifact import Artifact, ArtifactError
from chargecast.schema import FEATURES
from chargecast.training.train import TrainResult


def _copy_with(model_dir: Path, tmp_path: Path, edit: Any) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(model_dir, dest)
    meta = json.loads((dest / "metadata.json").read_text())
    edit(meta)
    (dest / "metadata.json").write_text(json.dumps(meta))
    return dest


def test_training_stores_the_reference_of_its_training_rows(model: Artifact, trained: TrainResult) -> None:
    ref = model.reference
    assert ref is not None
    assert ref.rows == len(trained.X_train)
    assert set(ref.numbers) == {"age", "bmi", "children"}
    assert set(ref.categories) == {"sex", "smoker", "region"}
    bmi = trained.X_train[:, FEATURES.index("bmi")]
    assert ref.numbers["bmi"].mean == pytest.approx(bmi.mean())
    assert len(ref.numbers["bmi"].quantiles) == reference.QUANTILES
    assert (ref.numbers["bmi"].quantiles[0], ref.numbers["bmi"].quantiles[-1]) == (bmi.min(), bmi.max())
    smokers = float(np.mean(trained.X_train[:, FEATURES.index("smoker")] == 1))
    assert ref.categories["smoker"]["yes"] == pytest.approx(smokers)
    assert "reference" not in model.describe()  # not sent to every client of /api/v1/model


def test_an_artifact_without_a_reference_still_loads(model_dir: Path, tmp_path: Path) -> None:
    old = Artifact.load(_copy_with(model_dir, tmp_path, lambda m: m.pop("reference")))
    assert old.reference is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(rows=0), "reference.rows' must be a count > 0"),
        (lambda r: r.update(numbers=[]), "reference.numbers' must be an object"),
        (lambda r: r["numbers"].pop("age"), "reference.numbers.age' is missing"),
        (lambda r: r["numbers"]["bmi"].update(sd="x"), "reference.numbers.bmi.sd' must be a finite number"),
        (lambda r: r["numbers"]["bmi"]["quantiles"].reverse(), "reference.numbers.bmi.quantiles' must not decrease"),
        (lambda r: r["numbers"]["age"].update(shares=[1.0]), "must hold one share more than there are edges"),
        (lambda r: r["categories"]["sex"].pop("male"), "reference.categories.sex' must give a share for each"),
        (lambda r: r["categories"]["sex"].update(male=0.9), "reference.categories.sex' must sum to 1"),
    ],
)
def test_a_broken_reference_is_refused_naming_the_field(
    model_dir: Path, tmp_path: Path, edit: Any, message: str
) -> None:
    path = _copy_with(model_dir, tmp_path, lambda m: edit(m["reference"]))
    with pytest.raises(ArtifactError, match=message.replace(".", r"\.")):
        Artifact.load(path)


def test_the_committed_model_carries_its_reference() -> None:
    """`make run` and the image serve models/current: drift monitoring needs its reference there."""
    committed = Artifact.load(Path(__file__).resolve().parents[1] / "models" / "current")
    assert committed.reference is not None
    assert set(committed.reference.numbers) | set(committed.reference.categories) == set(FEATURES)
