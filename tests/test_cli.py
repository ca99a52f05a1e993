"""The command line: real runs, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chargecast.cli import main
from chargecast.model.artifact import Artifact
from chargecast.training.data import load_csv


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chargecast.cli", *args], check=False, capture_output=True, text=True, cwd=cwd
    )


def test_train_writes_a_loadable_artifact_and_prints_the_leaderboard(insurance_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    proc = run("train", "--data", str(insurance_csv), "--out", str(out), "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Leaderboard" in proc.stdout
    assert "holdout" in proc.stdout
    model = Artifact.load(out)
    assert model.metadata["model"] in proc.stdout
    assert model.metadata["training"]["repeats"] == 1
    assert "over 20 random splits, same recipe: R²" in proc.stdout
    assert model.metadata["splits"]["seeds"] == list(range(1, 21))
    assert "## Random splits" in (out / "report.md").read_text()


def test_train_without_sex(insurance_csv: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "train",
                "--data",
                str(insurance_csv),
                "--out",
                str(tmp_path / "m"),
                "--exclude",
                "sex",
                "--repeats",
                "1",
                "--splits",
                "0",
            ]
        )
        == 0
    )
    assert Artifact.load(tmp_path / "m").metadata["excluded_features"] == ["sex"]


def test_bad_data_file_is_one_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("age,sex,bmi,children,smoker,region,charges\n30,female,22,0,maybe,southeast,1000\n")
    proc = run("train", "--data", str(bad), "--out", str(tmp_path / "m"))
    assert proc.returncode == 2
    assert "line 2, smoker: must be one of no, yes" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "/nonexistent.csv"], "not found"),
        (["train", "--exclude", "smoking", "--data", "{data}"], "invalid choice: 'smoking'"),
        (["train", "--test-size", "1.5"], "must be between 0 and 1"),
        (["predict", "x.csv", "--model", "/nonexistent"], "not found"),
    ],
)
def test_user_errors_never_show_a_traceback(args: list[str], message: str, insurance_csv: Path, tmp_path: Path) -> None:
    proc = run(*[a.replace("{data}", str(insurance_csv)) for a in args], cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_setting_is_named_by_its_environment_variable(tmp_path: Path) -> None:
    env = os.environ | {"CHARGECAST_PORT": "abc"}
    proc = subprocess.run(
        [sys.executable, "-m", "chargecast.cli", "serve"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "setting CHARGECAST_PORT: Input should be a valid integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_predict_writes_a_summary_of_the_book(
    insurance_csv: Path, model_dir: Path, model: Artifact, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    patients = tmp_path / "patients.csv"  # the training file without its real charges
    patients.write_text("".join(line.rsplit(",", 1)[0] + "\n" for line in insurance_csv.read_text().splitlines()))
    out, summary = tmp_path / "scored.parquet", tmp_path / "book.json"
    args = ["predict", str(patients), "-o", str(out), "--model", str(model_dir), "--summary", str(summary)]
    assert main(args) == 0
    assert str(summary) in capsys.readouterr().out
    X = load_csv(insurance_csv).X
    total = model.total(model.predict(X)[0], X)
    assert json.loads(summary.read_bytes()) == {
        "rows": len(X),
        "total": {"charges": total.charges, "interval": {"low": total.low, "high": total.high, "level": model.level}},
    }


def test_predict_writes_no_summary_when_a_row_is_bad(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("age,sex,bmi,children,smoker,region\n30,female,22,0,maybe,southeast\n")
    summary = tmp_path / "book.json"
    proc = run("predict", str(bad), "--model", str(model_dir), "--summary", str(summary))
    assert proc.returncode == 2
    assert "line 2, smoker: must be one of no, yes" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_predict_refuses_a_file_that_already_holds_charges_and_writes_nothing(
    insurance_csv: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Scoring the training file would replace its real charges with forecasts: refused, as the API does."""
    out = tmp_path / "scored.csv"
    proc = run("predict", str(insurance_csv), "-o", str(out), "--model", str(model_dir))
    assert proc.returncode == 2
    assert "line 1, charges: is a column chargecast adds; remove or rename it" in proc.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_bug_shows_its_traceback_not_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only expected input errors are exit 2 with one line; an internal error must not pass for one."""

    def broken(*args: object, **kwargs: object) -> int:
        raise ValueError("an internal bug")

    import chargecast.batch

    monkeypatch.setattr(chargecast.batch, "score_file", broken)
    patients = tmp_path / "p.csv"
    patients.write_text("age,sex,bmi,children,smoker,region\n30,female,22,0,no,southeast\n")
    with pytest.raises(ValueError, match="an internal bug"):
        main(["predict", str(patients)])


def test_a_bad_secret_setting_is_named_but_never_echoed() -> None:
    """A rejected audit URL or API key may hold a password: the message names the variable only."""
    env = {**os.environ, "CHARGECAST_AUDIT_URL": "mysql://u:hunter2@h/db"}
    done = subprocess.run(
        [sys.executable, "-m", "chargecast.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "CHARGECAST_AUDIT_URL" in done.stderr
    assert "hunter2" not in done.stderr
