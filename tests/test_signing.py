"""Signed model artifacts: keys made by openssl, train --sign, sign, and every refusal.

Each refusal is checked where it matters: ``chargecast predict`` (exit code, one line, nothing
written), a real ``chargecast serve`` process (it never listens), and the worker's own load.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from chargecast import signing
from chargecast.model import artifact
from chargecast.model.artifact import METADATA_FILE, SIGNATURE_FILE, Artifact
from chargecast.serving.app import create_app
from chargecast.settings import Settings
from chargecast.training.data import Dataset
from chargecast.training.train import TrainConfig, TrainResult, metadata, train
from tools import served

SRC = Path(__file__).resolve().parents[1] / "src"
CSV = "age,sex,bmi,children,smoker,region\n19,female,27.9,0,yes,southwest\n52,male,34.1,3,yes,northwest\n"
FAST = ("--folds", "2", "--repeats", "1", "--splits", "0")


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path
    other_private: Path
    other_public: Path
    rsa_private: Path
    rsa_public: Path
    ec_public: Path
    encrypted: Path
    ed448_private: Path
    ed448_public: Path


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """Keys made the way docs/signing.md says, with openssl."""
    d = tmp_path_factory.mktemp("keys")
    for name in ("signer", "other"):
        openssl("genpkey", "-algorithm", "ed25519", "-out", str(d / f"{name}.pem"))
        openssl("pkey", "-in", str(d / f"{name}.pem"), "-pubout", "-out", str(d / f"{name}.pub.pem"))
    openssl("genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(d / "rsa.pem"))
    openssl("pkey", "-in", str(d / "rsa.pem"), "-pubout", "-out", str(d / "rsa.pub.pem"))
    openssl("genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(d / "ec.pem"))
    openssl("pkey", "-in", str(d / "ec.pem"), "-pubout", "-out", str(d / "ec.pub.pem"))
    openssl("genpkey", "-algorithm", "ed25519", "-aes256", "-pass", "pass:secret", "-out", str(d / "enc.pem"))
    openssl("genpkey", "-algorithm", "ed448", "-out", str(d / "ed448.pem"))
    openssl("pkey", "-in", str(d / "ed448.pem"), "-pubout", "-out", str(d / "ed448.pub.pem"))
    return Keys(
        d / "signer.pem", d / "signer.pub.pem", d / "other.pem", d / "other.pub.pem",
        d / "rsa.pem", d / "rsa.pub.pem", d / "ec.pub.pem", d / "enc.pem", d / "ed448.pem", d / "ed448.pub.pem",
    )  # fmt: skip


@pytest.fixture(scope="session")
def other_trained(dataset: Dataset) -> TrainResult:
    """Another real model (another seed, fewer folds): other files, other metadata."""
    return train(dataset, TrainConfig(seed=7, folds=2, repeats=1, splits=0))


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chargecast.cli", *args],
        env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})},
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def one_line(proc: subprocess.CompletedProcess[str], command: str) -> str:
    """The refusal is exit 2 and exactly one line naming the command, never a traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"chargecast {command}: "), lines[0]
    return lines[0]


def copy_of(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)  # follows models/current's link: a plain directory
    return dest


def signed_copy(model_dir: Path, dest: Path, key: Path) -> Path:
    out = copy_of(model_dir, dest)
    signing.sign(out, signing.private_key(key))
    return out


# -- keys ----------------------------------------------------------------------------------
def test_wrong_or_unreadable_keys_are_one_line_naming_the_flag(keys: Keys, model_dir: Path, tmp_path: Path) -> None:
    target = copy_of(model_dir, tmp_path / "m")
    for key, words in (
        (keys.rsa_private, "--key {}: an RSA key; model signatures use Ed25519"),
        (keys.ed448_private, "--key {}: an Ed448 key; model signatures use Ed25519"),
        (keys.public, "--key {}: not a PEM private key (that is a public key"),
        (keys.encrypted, "--key {}: the key is encrypted"),
        (tmp_path / "absent.pem", "--key {}: cannot read the key (No such file or directory)"),
        (model_dir / METADATA_FILE, "--key {}: not a PEM private key"),
    ):
        line = one_line(run("sign", str(target), "--key", str(key)), "sign")
        assert words.format(key) in line
    assert not (target / SIGNATURE_FILE).exists()


def test_public_key_setting_refuses_private_and_foreign_keys(keys: Keys) -> None:
    for key, words in (
        (keys.private, "a private key; give its public half"),
        (keys.rsa_public, "an RSA key; model signatures use Ed25519"),
        (keys.ec_public, "an EC key; model signatures use Ed25519"),
        (keys.ed448_public, "an Ed448 key; model signatures use Ed25519"),
    ):
        with pytest.raises(signing.SigningError, match=f"^CHARGECAST_MODEL_PUBLIC_KEY {key}: {words}"):
            signing.public_key(key)


# -- the signature file --------------------------------------------------------------------
def test_sign_writes_base64_of_the_raw_signature_over_the_exact_metadata_bytes(
    keys: Keys, model_dir: Path, tmp_path: Path
) -> None:
    target = copy_of(model_dir, tmp_path / "m")
    done = run("sign", str(target), "--key", str(keys.private))
    assert done.returncode == 0, done.stderr
    assert f"-> {target / SIGNATURE_FILE}" in done.stdout
    sig = (target / SIGNATURE_FILE).read_bytes()
    assert sig.endswith(b"\n")
    assert sig.count(b"\n") == 1
    raw = base64.b64decode(sig.rstrip(b"\n"), validate=True)
    assert len(raw) == 64
    # What docs/signing.md promises, checked with openssl itself rather than our own code
    (tmp_path / "raw.sig").write_bytes(raw)
    openssl(
        "pkeyutl", "-verify", "-pubin", "-inkey", str(keys.public), "-rawin",
        "-in", str(target / METADATA_FILE), "-sigfile", str(tmp_path / "raw.sig"),
    )  # fmt: skip
    assert oct((target / SIGNATURE_FILE).stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in target.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_sign_refuses_an_artifact_whose_files_do_not_match(keys: Keys, model_dir: Path, tmp_path: Path) -> None:
    target = copy_of(model_dir, tmp_path / "m")
    (target / "model.json").write_bytes((target / "model.json").read_bytes() + b" ")
    line = one_line(run("sign", str(target), "--key", str(keys.private)), "sign")
    assert "model.json: sha256 does not match metadata.json" in line
    assert not (target / SIGNATURE_FILE).exists()


def test_sign_signs_the_published_version_the_link_shows(keys: Keys, trained: TrainResult, tmp_path: Path) -> None:
    out = tmp_path / "models" / "current"
    artifact.write(out, trained.predictor, trained.distribution, metadata(trained))
    assert out.is_symlink()
    signing.sign(out, signing.private_key(keys.private))
    assert (out.resolve() / SIGNATURE_FILE).is_file()
    assert signing.verify(out, signing.public_key(keys.public)).root == out.resolve()


# -- what is refused, and where ------------------------------------------------------------
@pytest.fixture
def cases(
    keys: Keys, model_dir: Path, trained: TrainResult, other_trained: TrainResult, tmp_path: Path
) -> dict[str, Path]:
    """Artifact directories, one per way a signature can fail, all else intact."""
    good = signed_copy(model_dir, tmp_path / "good", keys.private)
    other = tmp_path / "other"
    artifact.write(other, other_trained.predictor, other_trained.distribution, metadata(other_trained))
    other = signed_copy(other, tmp_path / "other-signed", keys.other_private)
    other_same_key = signed_copy(tmp_path / "other", tmp_path / "other-same-key", keys.private)

    tampered = copy_of(good, tmp_path / "tampered")  # one field: the interval level the form shows
    meta = json.loads((tampered / METADATA_FILE).read_bytes())
    meta["interval_level"] = 0.99
    (tampered / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    assert Artifact.load(tampered).metadata["interval_level"] == 0.99  # file hashes alone let it through

    swapped = copy_of(good, tmp_path / "swapped")  # another artifact's metadata and its own valid signature
    shutil.copy(other / METADATA_FILE, swapped / METADATA_FILE)
    shutil.copy(other / SIGNATURE_FILE, swapped / SIGNATURE_FILE)

    foreign_sig = copy_of(good, tmp_path / "foreign-sig")  # same key, but another artifact's signature
    shutil.copy(other_same_key / SIGNATURE_FILE, foreign_sig / SIGNATURE_FILE)

    # another artifact's metadata with a signature from the right key: genuine, but not these files
    relabelled = copy_of(good, tmp_path / "relabelled")
    shutil.copy(other_same_key / METADATA_FILE, relabelled / METADATA_FILE)
    shutil.copy(other_same_key / SIGNATURE_FILE, relabelled / SIGNATURE_FILE)

    unsigned = copy_of(good, tmp_path / "unsigned")
    (unsigned / SIGNATURE_FILE).unlink()

    garbage = copy_of(good, tmp_path / "garbage")
    (garbage / SIGNATURE_FILE).write_text("not a signature\n")

    return {
        "good": good, "tampered": tampered, "swapped": swapped, "foreign-sig": foreign_sig,
        "relabelled": relabelled, "unsigned": unsigned, "garbage": garbage,
    }  # fmt: skip


REFUSED = {
    "tampered": "metadata.json.sig: the signature does not match metadata.json",
    "swapped": "metadata.json.sig: the signature does not match metadata.json",
    "foreign-sig": "metadata.json.sig: the signature does not match metadata.json",
    "relabelled": ": sha256 does not match metadata.json (file changed or corrupt)",
    "unsigned": "metadata.json.sig: not found; CHARGECAST_MODEL_PUBLIC_KEY is set",
    "garbage": "metadata.json.sig: not a signature (expected the base64 of 64 bytes)",
}


def test_predict_refuses_each_bad_artifact_and_writes_nothing(
    keys: Keys, cases: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "in.csv").write_text(CSV)
    env = {"CHARGECAST_MODEL_PUBLIC_KEY": str(keys.public)}
    for name, words in REFUSED.items():
        out, db = tmp_path / f"{name}.scored.csv", tmp_path / f"{name}.sqlite3"
        args = ("predict", str(tmp_path / "in.csv"), "--model", str(cases[name]), "-o", str(out))
        line = one_line(run(*args, "--audit", f"sqlite:///{db}", env=env), "predict")
        assert words in line, (name, line)
        assert not out.exists(), name
        if name != "relabelled":  # a signature refusal comes before the audit store is even opened
            assert not db.exists(), name
    done = run("predict", str(tmp_path / "in.csv"), "--model", str(cases["good"]), env=env)
    assert done.returncode == 0, done.stderr
    assert "2 rows scored" in done.stdout


def test_predict_refuses_the_wrong_or_a_foreign_public_key(keys: Keys, cases: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text(CSV)
    args = ("predict", str(tmp_path / "in.csv"), "--model", str(cases["good"]))
    wrong = one_line(run(*args, env={"CHARGECAST_MODEL_PUBLIC_KEY": str(keys.other_public)}), "predict")
    assert "the signature does not match metadata.json under CHARGECAST_MODEL_PUBLIC_KEY (ed25519:" in wrong
    rsa = one_line(run(*args, env={"CHARGECAST_MODEL_PUBLIC_KEY": str(keys.rsa_public)}), "predict")
    assert "an RSA key; model signatures use Ed25519" in rsa
    assert not (tmp_path / "in.scored.csv").exists()
    unset = run(*args)  # no key set: signatures are not required (and hashes still are)
    assert unset.returncode == 0, unset.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_refuses_to_start_on_each_bad_artifact(keys: Keys, cases: dict[str, Path], tmp_path: Path) -> None:
    env = {"CHARGECAST_MODEL_PUBLIC_KEY": str(keys.public), "TMPDIR": str(tmp_path)}
    for name, words in {**REFUSED, "wrong-key": "signed by another key"}.items():
        port = free_port()
        key_env = {**env, "CHARGECAST_MODEL_PUBLIC_KEY": str(keys.other_public)} if name == "wrong-key" else env
        model = cases["good" if name == "wrong-key" else name]
        done = run("serve", "--model", str(model), "--port", str(port), "--metrics-port", "0", env=key_env)
        assert words in one_line(done, "serve"), name
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    assert not list(tmp_path.glob("chargecast-model-*"))  # no snapshot left behind


@pytest.fixture
def signed_server(keys: Keys, cases: dict[str, Path], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real `chargecast serve` of the good signed copy, with the key set; yields its URL and TMPDIR."""
    port, tmp = free_port(), tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(SRC), "TMPDIR": str(tmp), "CHARGECAST_MODEL_PUBLIC_KEY": str(keys.public)}
    cmd = [sys.executable, "-m", "chargecast.cli", "serve", "--model", str(cases["good"]), "--port", str(port)]
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([*cmd, "--metrics-port", "0", "--workers", "1"], env=env, stdout=fh, stderr=fh)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        yield url, tmp
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_serve_serves_a_signed_model_and_its_workers_verify_the_copy(signed_server: tuple[str, Path]) -> None:
    url, tmp = signed_server
    record = {"age": 19, "sex": "female", "bmi": 27.9, "children": 0, "smoker": "yes", "region": "southwest"}
    answer = httpx.post(f"{url}/predict_api", json=record)
    assert answer.status_code == 200, answer.text
    (snapshot,) = tmp.glob("chargecast-model-*")  # what the workers load carries the signature they check
    assert (snapshot / SIGNATURE_FILE).is_file()
    assert {p.name for p in snapshot.iterdir()} == {METADATA_FILE, SIGNATURE_FILE, "model.json", "arrays.npz"}


def test_a_worker_loading_on_its_own_refuses_a_tampered_model(keys: Keys, cases: dict[str, Path]) -> None:
    """The app's own load (every worker start) checks too, not only `chargecast serve`."""
    app = create_app(Settings(model_dir=cases["good"], model_public_key=keys.public, log_level="warning"))
    with served(app) as url:
        assert httpx.get(f"{url}/api/v1/model").json()["version"]
    app = create_app(Settings(model_dir=cases["tampered"], model_public_key=keys.public, log_level="warning"))
    service = app.state.service
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while service.load_error is None and service.model is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.get("/readyz").status_code == 503
    assert service.model is None
    assert "the signature does not match metadata.json" in str(service.load_error)


# -- train --sign --------------------------------------------------------------------------
def test_train_sign_publishes_the_signature_with_the_artifact(keys: Keys, insurance_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "current"
    done = run("train", "--data", str(insurance_csv), "--out", str(out), *FAST, "--sign", str(keys.private))
    assert done.returncode == 0, done.stderr
    assert f"signed with {keys.private}" in done.stdout
    version = out.resolve()
    assert version.parent.name == ".current.versions"  # the signature lives in the published version
    assert {METADATA_FILE, SIGNATURE_FILE} <= {p.name for p in version.iterdir()}
    first = signing.verify(out, signing.public_key(keys.public))
    (tmp_path / "in.csv").write_text(CSV)
    scored = run("predict", str(tmp_path / "in.csv"), "--model", str(out),
                 env={"CHARGECAST_MODEL_PUBLIC_KEY": str(keys.public)})  # fmt: skip
    assert scored.returncode == 0, scored.stderr

    again = run("train", "--data", str(insurance_csv), "--out", str(out), *FAST, "--seed", "3", "--sign",
                str(keys.other_private))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert out.resolve() != version  # a new version, swapped in with its own signature
    assert signing.verify(out, signing.public_key(keys.other_public)).digest != first.digest
    with pytest.raises(signing.SigningError, match="signed by another key"):
        signing.verify(out, signing.public_key(keys.public))


def test_train_with_a_bad_key_stops_before_training(keys: Keys, insurance_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    start = time.monotonic()
    done = run("train", "--data", str(insurance_csv), "--out", str(out), "--sign", str(keys.rsa_private))
    assert f"--sign {keys.rsa_private}: an RSA key" in one_line(done, "train")
    assert time.monotonic() - start < 20  # no cross-validation ran
    assert not out.exists()
    assert not (tmp_path / ".m.versions").exists()
