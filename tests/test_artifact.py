"""The artifact: round trip, verification before parsing, and publishing that survives a killed writer."""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chargecast.model import artifact, publish
from chargecast.model.artifact import Artifact, ArtifactError
from chargecast.schema import ValidationError
from chargecast.training.train import TrainResult

RECORD: dict[str, Any] = {"age": 52, "sex": "male", "bmi": 34.1, "children": 2, "smoker": "yes", "region": "northwest"}


@pytest.fixture
def copy(model_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(model_dir, dest)
    return dest


def edit_metadata(path: Path, **changes: Any) -> None:
    meta = json.loads((path / "metadata.json").read_text())
    for key, value in changes.items():
        meta[key] = value
    (path / "metadata.json").write_text(json.dumps(meta))


def test_round_trip_predicts_like_the_trained_model(model: Artifact, trained: TrainResult) -> None:
    charges, low, high = model.predict(trained.X_test)
    np.testing.assert_array_equal(charges, trained.pred_test)
    np.testing.assert_array_equal(low, trained.low_test)
    np.testing.assert_array_equal(high, trained.high_test)


def test_metadata_carries_what_the_issue_names(model: Artifact, dataset: Any) -> None:
    meta = model.describe()
    for key in ("version", "created_at", "libraries", "schema", "interval_level", "model", "leaderboard", "metrics"):
        assert key in meta
    assert meta["data"]["sha256"] == dataset.sha256
    assert "files" not in meta
    assert set(model.metadata["files"]) == {"model.json", "arrays.npz"}
    assert model.level == 0.9


def test_one_record_matches_the_batch_path(model: Artifact) -> None:
    one = model.predict_record(RECORD)
    X = np.array([[52, 1, 34.1, 2, 1, 1]], dtype=float)
    charges, low, high = model.predict(X)
    assert (one.charges, one.low, one.high) == pytest.approx((charges[0], low[0], high[0]), rel=1e-12)
    assert one.low <= one.charges <= one.high


def test_one_record_path_is_bit_identical_to_the_batch_path(model: Artifact, trained: TrainResult) -> None:
    """Every holdout row, one at a time, gives exactly the batch numbers: forecast, interval, quantiles."""
    X = trained.X_test
    charges, low, high = model.predict(X)
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    q = model.quantiles(charges, X, levels)
    for i, row in enumerate(X.tolist()):
        p = model.predict_row(row)
        assert (p.charges, p.low, p.high) == (charges[i], low[i], high[i])
        assert model.quantiles_row(p.charges, row, levels) == q[i].tolist()


def test_quantiles_and_totals_agree_with_the_interval(model: Artifact, trained: TrainResult) -> None:
    X = trained.X_test
    charges, low, high = model.predict(X)
    q = model.quantiles(charges, X, [0.05, 0.5, 0.95])
    np.testing.assert_allclose(q[:, [0, 2]], np.column_stack([low, high]))
    for i in range(0, len(X), 29):
        p = model.predict_row(X[i].tolist())
        assert model.quantiles_row(p.charges, X[i].tolist(), [0.05, 0.5, 0.95]) == pytest.approx(q[i].tolist())
    total = model.total(charges, X)
    assert total.charges == pytest.approx(charges.sum())
    assert total.low < trained.y_test.sum() < total.high
    assert total.high - total.low < 0.2 * float(np.sum(high - low))


def test_bad_record_raises_validation_error(model: Artifact) -> None:
    with pytest.raises(ValidationError, match="age"):
        model.predict_record(RECORD | {"age": 12})


def test_explanations_sum_to_prediction_minus_baseline(model: Artifact, trained: TrainResult) -> None:
    contrib = model.explain(trained.X_test)
    np.testing.assert_allclose(contrib.sum(axis=1) + model.baseline, trained.pred_test, rtol=1e-9)


@pytest.mark.parametrize("name", ["model.json", "arrays.npz"])
def test_tampered_file_is_refused_by_name(copy: Path, name: str) -> None:
    with (copy / name).open("ab") as fh:
        fh.write(b" ")
    with pytest.raises(ArtifactError, match=f"{name}: sha256 does not match"):
        Artifact.load(copy)


def test_missing_file_is_refused(copy: Path) -> None:
    (copy / "arrays.npz").unlink()
    with pytest.raises(ArtifactError, match=r"arrays.npz: listed in metadata.json but missing"):
        Artifact.load(copy)


def test_unlisted_model_file_is_refused(copy: Path) -> None:
    meta = json.loads((copy / "metadata.json").read_text())
    del meta["files"]["model.json"]
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"does not list model\.json"):
        Artifact.load(copy)


def test_paths_outside_the_artifact_are_refused(copy: Path) -> None:
    meta = json.loads((copy / "metadata.json").read_text())
    meta["files"]["../secret"] = "0" * 64
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="escapes"):
        Artifact.load(copy)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": 99}, "format 99 is not supported"),
        ({"libraries": {"numpy": "1.26.4", "chargecast": "0.1.0"}}, "numpy 1.26.4"),
        ({"libraries": {"numpy": np.__version__, "chargecast": "7.0.0"}}, "chargecast 7.0.0"),
        ({"schema": []}, "different patient record schema"),
    ],
)
def test_incompatible_artifacts_are_refused(copy: Path, changes: dict[str, Any], message: str) -> None:
    edit_metadata(copy, **changes)
    with pytest.raises(ArtifactError, match=message):
        Artifact.load(copy)


def test_unreadable_metadata_and_missing_directory(copy: Path, tmp_path: Path) -> None:
    (copy / "metadata.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable metadata"):
        Artifact.load(copy)
    with pytest.raises(ArtifactError, match="not found"):
        Artifact.load(tmp_path / "nowhere")


def test_failed_write_leaves_the_old_artifact_untouched(copy: Path, trained: TrainResult) -> None:
    before = {p.name: p.read_bytes() for p in copy.iterdir()}

    class Broken:
        kind = "linear"

        def to_json(self) -> dict[str, Any]:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        artifact.write(copy, Broken(), trained.distribution, {})  # type: ignore[arg-type]
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert [p.name for p in copy.parent.iterdir()] == ["model"]


def test_a_failure_while_writing_files_leaves_no_trace(
    copy: Path, trained: TrainResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    real_put = publish.Draft.put

    def put(draft: publish.Draft, rel: str, data: bytes) -> None:
        if rel == "arrays.npz":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_put(draft, rel, data)

    monkeypatch.setattr(publish.Draft, "put", put)
    with pytest.raises(OSError, match="No space left"):
        artifact.write(copy, trained.predictor, trained.distribution, {})
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert list(publish.versions_dir(copy).iterdir()) == []


def test_each_write_publishes_a_version_and_keeps_only_the_one_before(copy: Path, trained: TrainResult) -> None:
    """The committed model is a plain directory: the first write keeps it as the previous version."""
    edit_metadata(copy, model="committed")
    before = "committed"
    for n in range(3):
        meta = artifact.write(copy, trained.predictor, trained.distribution, {"model": f"write {n}"})
        assert copy.is_symlink()
        assert not Path(os.readlink(copy)).is_absolute(), "a relative link survives copying the tree"
        assert copy.resolve().name.startswith(meta["version"])  # the same model twice a day: "-2" is appended
        assert Artifact.load(copy).metadata["model"] == f"write {n}"
        kept = [Artifact.load(p).metadata["model"] for p in publish.versions_dir(copy).iterdir()]
        assert sorted(kept) == sorted([before, f"write {n}"]), "the previous one kept for rollback, older pruned"
        before = f"write {n}"
    assert sorted(p.name for p in copy.parent.iterdir()) == [".model.versions", "model"]


# Run in a child process: write a new model, SIGKILLed just before its Nth file-system step.
KILLED_WRITER = """
import os, shutil, signal, sys
from chargecast.model import artifact, publish

out, source, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = artifact.Artifact.load(source)
steps = 0


def deadly(module, name):
    real = getattr(module, name)

    def step(*args, **kwargs):
        global steps
        steps += 1
        if steps == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(module, name, step)


for module, name in [(os, "fsync"), (os, "rename"), (os, "replace"), (os, "symlink"), (os, "unlink"),
                     (os, "rmdir"), (shutil, "rmtree"), (publish, "_exchange")]:
    deadly(module, name)
artifact.write(out, model.predictor, model.distribution, {"model": "new"},
               lambda meta: {"report.md": b"report", "plots/residuals.png": b"png"})
print(steps)
"""


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["committed directory", "published link"])
def test_a_writer_killed_at_any_step_leaves_the_old_model_or_the_new(
    model_dir: Path, trained: TrainResult, tmp_path: Path, layout: str
) -> None:
    seen: list[str] = []
    for kill_at in itertools.count(1):
        out = tmp_path / str(kill_at) / "current"
        if layout == "committed directory":
            shutil.copytree(model_dir, out)
            edit_metadata(out, model="old")
        else:
            artifact.write(out, trained.predictor, trained.distribution, {"model": "old"})
        child = subprocess.run(
            [sys.executable, "-c", KILLED_WRITER, str(out), str(model_dir), str(kill_at)],
            capture_output=True,
            text=True,
            check=False,
        )
        seen.append(Artifact.load(out).metadata["model"])  # a complete, verified model, or this raises
        if child.returncode != -signal.SIGKILL:
            assert child.returncode == 0, child.stderr
            assert int(child.stdout) == kill_at - 1
            break
        # The next write recovers: what the killed one left is pruned, the one before is kept.
        artifact.write(out, trained.predictor, trained.distribution, {"model": "again"})
        assert Artifact.load(out).metadata["model"] == "again"
        assert sorted(p.name for p in out.parent.iterdir()) == [".current.versions", "current"]
        kept = [Artifact.load(p).metadata["model"] for p in publish.versions_dir(out).iterdir()]
        assert sorted(kept) == ["again", seen[-1]]
    swap = seen.index("new")
    assert swap > 1
    assert seen == ["old"] * swap + ["new"] * (len(seen) - swap), "one swap, never back"


def rehash(path: Path) -> None:
    """Re-sign the file hashes after an edit: what a careless (not malicious) tool would do."""
    meta = json.loads((path / "metadata.json").read_text())
    meta["files"] = {rel: artifact.sha256_file(path / rel) for rel in meta["files"]}
    (path / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"files": ["model.json"]}, "'files' must map"),
        ({"files": None}, "'files' must map"),
        ({"version": None}, "'version' must be a string"),
    ],
)
def test_malformed_metadata_is_an_artifact_error(copy: Path, changes: dict[str, Any], message: str) -> None:
    edit_metadata(copy, **changes)
    with pytest.raises(ArtifactError, match=message):
        Artifact.load(copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda spec: spec["interval"].update(var=spec["interval"]["var"][:1]), "per-group fields"),
        (lambda spec: spec["interval"].update(groups=["a", "b", "c"]), "unknown interval groups"),
        (lambda spec: spec["interval"].update(grid=[g[::-1] for g in spec["interval"]["grid"]]), "must not decrease"),
        (lambda spec: spec["predictor"].update(coef=spec["predictor"]["coef"][:-1]), "differ in length"),
        (lambda spec: spec.update(predictor="linear"), "cannot build the model"),
    ],
)
def test_structurally_broken_models_are_refused_at_load(copy: Path, edit: Any, message: str) -> None:
    spec = json.loads((copy / "model.json").read_text())
    edit(spec)
    (copy / "model.json").write_text(json.dumps(spec))
    rehash(copy)
    with pytest.raises(ArtifactError, match=message):
        Artifact.load(copy)


def test_rewording_labels_keeps_the_artifact_loadable_but_ranges_do_not(copy: Path) -> None:
    meta = json.loads((copy / "metadata.json").read_text())
    meta["schema"][1]["help"] = "Reworded help text."
    meta["schema"][1]["label"] = "Gender"
    (copy / "metadata.json").write_text(json.dumps(meta))
    assert Artifact.load(copy).version == meta["version"]
    meta["schema"][0]["maximum"] = 120
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="different patient record schema"):
        Artifact.load(copy)


def test_the_committed_model_loads_and_meets_the_targets() -> None:
    """What `make run` and the image serve: it must load with this code and be the good one."""
    committed = Artifact.load(Path(__file__).resolve().parents[1] / "models" / "current")
    holdout = committed.metadata["metrics"]["holdout"]
    assert holdout["r2"] >= 0.88
    assert holdout["mae"] <= 2350
    assert 0.86 <= holdout["coverage"] <= 0.94
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert committed.version in readme


def test_a_tree_grid_model_round_trips_through_npz(dataset: Any, trained: TrainResult, tmp_path: Path) -> None:
    """Boosting never wins on this data, but when it does its grid must save and load exactly."""
    from chargecast.training.train import BoostingCandidate

    candidate = BoostingCandidate()
    grid = candidate.compile(candidate.fit(dataset.X, dataset.y, [], seed=0), dataset.X)
    artifact.write(tmp_path / "grid", grid, trained.distribution, {"model": "gradient_boosting"})
    loaded = Artifact.load(tmp_path / "grid")
    assert loaded.predictor.kind == "grid"
    np.testing.assert_array_equal(loaded.predict(trained.X_test)[0], grid.predict(trained.X_test))
    np.testing.assert_allclose(
        loaded.explain(trained.X_test[:5]).sum(axis=1) + loaded.baseline, grid.predict(trained.X_test[:5]), rtol=1e-9
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "2"}, "field 'format' must be an integer"),
        ({"format": True}, "field 'format' must be an integer"),
        ({"version": ""}, "field 'version' must be a string"),
        ({"files": {"model.json": "abc", "arrays.npz": "0" * 64}}, r"field 'files.model.json' must be 64 hex"),
        ({"files": {"model.json": 7}}, r"field 'files.model.json' must be 64 hex"),
        ({"libraries": ["numpy", "chargecast"]}, "field 'libraries' must be an object"),
        ({"libraries": {"numpy": 2}}, r"field 'libraries.numpy' must be a version string"),
        ({"schema": {"age": "int"}}, "field 'schema' must be a list of objects"),
        ({"schema": ["age"]}, "field 'schema' must be a list of objects"),
        ({"interval_level": 90}, r"field 'interval_level' must be a number between 0 and 1"),
        ({"interval_level": "0.9"}, r"field 'interval_level' must be a number between 0 and 1"),
        ({"interval_level": 1.0}, r"field 'interval_level' must be a number between 0 and 1"),
        ({"metrics": []}, "field 'metrics' must be an object"),
        ({"training_ranges": [1, 2]}, "field 'training_ranges' must be an object"),
        ({"leaderboard": {}}, "field 'leaderboard' must be a list"),
        ({"created_at": 20240101}, "field 'created_at' must be a string"),
        ({"training_ranges": {"age": [18, 64]}}, r"field 'training_ranges.age' must be an object"),
        ({"training_ranges": {"age": {"min": 70, "max": 18}}}, r"field 'training_ranges.age' must have min <= max"),
        ({"training_ranges": {"age": {"min": "abc", "max": 64}}}, r"field 'training_ranges.age.min' must be a number"),
        ({"training_ranges": {"age": {"min": 18}}}, r"field 'training_ranges.age.max' must be a number"),
        ({"training_ranges": {"sex": {"female": -1}}}, r"field 'training_ranges.sex.female' must be a count"),
        ({"training_ranges": {"sex": {"female": 1.5}}}, r"field 'training_ranges.sex.female' must be a count"),
    ],
)
def test_metadata_fields_of_the_wrong_type_are_named_with_their_rule(
    copy: Path, changes: dict[str, Any], message: str
) -> None:
    edit_metadata(copy, **changes)
    with pytest.raises(ArtifactError, match=message):
        Artifact.load(copy)


@pytest.mark.parametrize("field", ["format", "version", "files", "libraries", "schema"])
def test_required_metadata_fields_are_named_when_missing(copy: Path, field: str) -> None:
    meta = json.loads((copy / "metadata.json").read_text())
    del meta[field]
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=f"field '{field}' is missing"):
        Artifact.load(copy)


def test_metadata_that_is_not_an_object_is_refused(copy: Path) -> None:
    (copy / "metadata.json").write_text("[]")
    with pytest.raises(ArtifactError, match="must be a JSON object"):
        Artifact.load(copy)


def test_a_snapshot_loads_only_with_the_digest_it_was_made_with(copy: Path, tmp_path: Path) -> None:
    model, contents = artifact.load_verified(copy)
    snap = tmp_path / "snap"
    snap.mkdir(mode=0o700)
    digest = artifact.snapshot(contents, snap)
    assert sorted(p.name for p in snap.iterdir()) == ["arrays.npz", "metadata.json", "model.json"]
    assert Artifact.load(snap, digest).version == model.version
    with pytest.raises(ArtifactError, match="not the one verified at start-up"):
        Artifact.load(snap, "0" * 64)
