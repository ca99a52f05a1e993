"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chargecast.model import artifact
from chargecast.model.artifact import Artifact
from chargecast.training.data import Dataset, load_csv
from chargecast.training.train import TrainConfig, TrainResult, metadata, train
from postgres import Postgres, database_name, postgres_server


@pytest.fixture(scope="session")
def insurance_csv() -> Path:
    """The public insurance data set, kept in ``shared/`` beside the repository (read-only)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "insurance.csv"
    if not path.is_file():
        pytest.fail(f"test data not found at {path}; the repository must sit beside shared/")
    return path


@pytest.fixture(scope="session")
def dataset(insurance_csv: Path) -> Dataset:
    return load_csv(insurance_csv)


@pytest.fixture(scope="session")
def trained(dataset: Dataset) -> TrainResult:
    """One full training run on the shared data with the default (seed 42) split."""
    return train(dataset, TrainConfig())


@pytest.fixture(scope="session")
def model_dir(trained: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "current"
    artifact.write(out, trained.predictor, trained.distribution, metadata(trained))
    return out


@pytest.fixture(scope="session")
def model(model_dir: Path) -> Artifact:
    return Artifact.load(model_dir)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL 15 server for the session (see tests/postgres.py)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: Postgres) -> str:
    """A fresh database on the session's server, for one test."""
    if not postgres.running():  # a test that stopped it and failed before restarting
        postgres.start()
    return postgres.fresh_database(database_name())
