"""Supply chain: the image's SBOM against serve.lock, and signed pushes a policy enforces.

The image tests build the real image (``deploy/image.sh build``) and push it, signed with a GPG
key made for the test, to Debian's ``docker-registry`` on loopback. A ``policy.json`` that
requires that key's signature for the registry then decides every ``podman pull``. Debian 12's
podman has sigstore (cosign) signing and verification patched out, so the signatures are GPG
"simple signing" kept in a lookaside store; docs/supply-chain.md says what that means.

podman reads the policy, registries.d and registries.conf from the test's own ``HOME`` and
``CONTAINERS_REGISTRIES_CONF``, and gpg its keys from a temporary ``GNUPGHOME``: nothing here
reads or writes the machine's /etc/containers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from test_container import IN_CI, build_image, free_port, podman, sh

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "image.sh"
IMAGE = "localhost/chargecast:supply"  # its own tag: other tests build localhost/chargecast:dev
SERVE_LOCK = ROOT / "requirements" / "serve.lock"
# Components of the image's environment that serve.lock does not pin, each with its reason.
NOT_IN_LOCK = {"chargecast": "the project itself: the SBOM's root component, built from the source tree"}

__all__ = ["podman"]  # the fixture, imported so this module can use it


def normalise(name: str) -> str:
    """PEP 503: the SBOM keeps distributions' own spelling (Jinja2, typing_extensions)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\;]+)", line):
            pins[normalise(m[1])] = m[2]
    return pins


def sbom_components(sbom: dict[str, Any]) -> dict[str, str]:
    return {normalise(c["name"]): c["version"] for c in sbom["components"]}


# -- the script's own checks: no container engine needed ---------------------------------


def test_image_script_passes_shellcheck() -> None:
    if not shutil.which("shellcheck"):
        if IN_CI:
            pytest.fail("shellcheck is missing: .ci/run installs it")
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["push", "localhost/chargecast:dev", "127.0.0.1:5000/chargecast:1"], "--sign-by is required"),
        (["push", "localhost/chargecast:dev", "chargecast:1", "--sign-by", "ABCD"], "must name a registry"),
        (["push", "localhost/chargecast:dev", "127.0.0.1:5000/c:1", "--sign-by"], "--sign-by needs"),
        (["push", "localhost/chargecast:dev"], "push needs SOURCE and DEST"),
        (["build", "--platform", "arm64"], "unknown argument '--platform'"),
        (["sign"], "usage: deploy/image.sh build"),
    ],
)
def test_image_script_rejects_bad_arguments_in_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, check=False, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_sbom_tool_is_pinned_with_hashes() -> None:
    """The build installs cyclonedx-bom with --require-hashes: every pin needs its hashes."""
    text = (ROOT / "requirements" / "sbom.lock").read_text()
    pins = lock_pins(ROOT / "requirements" / "sbom.lock")
    assert "cyclonedx-bom" in pins
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    for block in blocks:
        if "==" in block.split("\n", 1)[0]:
            assert "--hash=sha256:" in block, block


# -- the SBOM of the real image -----------------------------------------------------------


@pytest.fixture(scope="module")
def built(podman: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The image and the SBOM file the build put beside it."""
    return IMAGE, build_image(IMAGE, tmp_path_factory.mktemp("dist"))


def in_image(image: str, *argv: str) -> str:
    return sh("podman", "run", "--rm", "--entrypoint", argv[0], image, *argv[1:]).stdout


@pytest.mark.container
def test_sbom_in_the_image_is_the_file_beside_it(built: tuple[str, Path]) -> None:
    image, beside = built
    inside = in_image(image, "cat", "/app/sbom.cdx.json")
    assert inside == beside.read_text()
    sbom = json.loads(inside)
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["specVersion"] == "1.6"
    assert sbom["metadata"]["component"]["name"] == "chargecast"
    print(f"SBOM: {len(sbom['components'])} components, {len(inside):,} bytes")


@pytest.mark.container
def test_sbom_lists_exactly_serve_lock(built: tuple[str, Path]) -> None:
    """Every pinned package at its pinned version, and nothing the lock does not pin."""
    sbom = json.loads(built[1].read_text())
    listed, pinned = sbom_components(sbom), lock_pins(SERVE_LOCK)
    missing = {name: version for name, version in pinned.items() if listed.get(name) != version}
    assert not missing, f"pinned in serve.lock but not in the SBOM at that version: {missing}"
    unpinned = set(listed) - set(pinned) - set(NOT_IN_LOCK)
    assert not unpinned, f"in the image but not pinned in serve.lock: {sorted(unpinned)}"
    for component in sbom["components"]:
        assert component["purl"] == f"pkg:pypi/{normalise(component['name'])}@{component['version']}"


@pytest.mark.container
def test_sbom_is_what_the_image_has_installed(built: tuple[str, Path]) -> None:
    """The SBOM against the image's own package metadata, and no trace of the SBOM tool."""
    image, beside = built
    probe = (
        "import importlib.metadata as m, json, os; "
        "print(json.dumps({'dists': {d.metadata['Name']: d.version for d in m.distributions()}, "
        "'sbom_venv': os.path.exists('/opt/sbom')}))"
    )
    found = json.loads(in_image(image, "python3", "-c", probe))
    installed = {normalise(name): version for name, version in found["dists"].items()}
    listed = sbom_components(json.loads(beside.read_text()))
    assert installed.pop("chargecast")
    assert installed == listed
    assert not found["sbom_venv"]
    assert not {"cyclonedx-bom", "cyclonedx-python-lib", "lxml"} & set(installed)


# -- signed pushes and the pull policy -----------------------------------------------------


@dataclass
class Registry:
    """docker-registry on loopback, its signature store, a policy, and the keys."""

    host: str
    home: Path
    lookaside: Path
    policy: Path
    env: dict[str, str]
    fingerprint: str
    attacker_gnupg: Path
    attacker_fingerprint: str
    pulled: list[str] = field(default_factory=list)

    def run(self, *args: str, gnupg: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = self.env | ({"GNUPGHOME": str(gnupg)} if gnupg else {})
        return subprocess.run(args, capture_output=True, text=True, timeout=600, check=False, env=env)

    def pull(self, ref: str) -> subprocess.CompletedProcess[str]:
        self.pulled.append(ref)
        return self.run("podman", "pull", "--quiet", "--signature-policy", str(self.policy), ref)

    def push_unsigned(self, source: str, dest: str) -> None:
        """What someone without the key can do: push under any name, signatures dropped."""
        proc = self.run("podman", "push", "--quiet", "--remove-signatures", source, f"docker://{dest}")
        assert proc.returncode == 0, proc.stderr


def make_key(gnupg: Path, uid: str) -> str:
    gnupg.mkdir(mode=0o700)
    env = os.environ | {"GNUPGHOME": str(gnupg)}
    gen = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", uid]
    subprocess.run([*gen, "ed25519", "sign", "never"], capture_output=True, check=True, env=env, timeout=60)
    listing = subprocess.run(
        ["gpg", "--list-secret-keys", "--with-colons"], capture_output=True, text=True, check=True, env=env
    ).stdout
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def export_key(gnupg: Path, fingerprint: str, path: Path) -> Path:
    """The public key, the one file a cluster's or a laptop's policy needs."""
    env = os.environ | {"GNUPGHOME": str(gnupg)}
    cmd = ["gpg", "--export", "--armor", fingerprint]
    armored = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert "BEGIN PGP PUBLIC KEY BLOCK" in armored.stdout, armored.stderr
    path.write_text(armored.stdout)
    return path


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def write_config(tmp: Path, host: str, lookaside_url: str, lookaside: Path, public_key: Path) -> tuple[Path, Path]:
    """registries.d (where signatures are written and read), registries.conf and the policy.

    The policy refuses everything by default, accepts local storage (the source of pushes) and
    requires a signature by the release key for every image of the test registry.
    """
    home = tmp / "home"
    config = home / ".config" / "containers"
    (config / "registries.d").mkdir(parents=True)
    (config / "registries.d" / "chargecast.yaml").write_text(
        f"docker:\n  {host}:\n    lookaside: {lookaside_url}\n    lookaside-staging: {lookaside.as_uri()}\n"
    )
    (tmp / "registries.conf").write_text(
        f'unqualified-search-registries = []\n[[registry]]\nlocation = "{host}"\ninsecure = true\n'
    )
    policy = {
        "default": [{"type": "reject"}],
        "transports": {
            "containers-storage": {"": [{"type": "insecureAcceptAnything"}]},
            "docker": {host: [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(public_key)}]},
        },
    }
    (config / "policy.json").write_text(json.dumps(policy, indent=2))
    return home, config / "policy.json"


@pytest.fixture(scope="module")
def registry(built: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    tool = shutil.which("docker-registry")
    if not tool:
        if IN_CI:
            pytest.fail("docker-registry is missing: .ci/run installs it")
        pytest.skip("Debian's docker-registry is not installed (apt-get install docker-registry)")
    tmp = tmp_path_factory.mktemp("registry")
    port, look_port = free_port(), free_port()
    host = f"127.0.0.1:{port}"
    (tmp / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp / 'storage'}\nhttp:\n  addr: {host}\n"
    )
    lookaside = tmp / "lookaside"
    lookaside.mkdir()
    gnupg, attacker = tmp / "gnupg", tmp / "attacker-gnupg"
    fingerprint = make_key(gnupg, "chargecast release <release@chargecast.test>")
    attacker_fpr = make_key(attacker, "someone else <else@chargecast.test>")
    public_key = export_key(gnupg, fingerprint, tmp / "release.pub.asc")
    home, policy = write_config(tmp, host, f"http://127.0.0.1:{look_port}", lookaside, public_key)
    env = os.environ | {
        "HOME": str(home),
        "CONTAINERS_REGISTRIES_CONF": str(tmp / "registries.conf"),
        "GNUPGHOME": str(gnupg),
    }
    log = (tmp / "registry.log").open("w")
    server = subprocess.Popen([tool, "serve", str(tmp / "config.yml")], stdout=log, stderr=log)
    # The signature store served read-only over HTTP, as a web server would publish it.
    store = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(lookaside), str(look_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reg = Registry(host, home, lookaside, policy, env, fingerprint, attacker, attacker_fpr)
    try:
        wait_http(f"http://{host}/v2/")
        wait_http(f"http://127.0.0.1:{look_port}/")
        yield reg
    finally:
        for ref in reg.pulled:
            sh("podman", "rmi", "--force", ref, check=False)
        for proc in (server, store):
            proc.terminate()
            proc.wait(10)
        log.close()
        for home_dir in (gnupg, attacker):
            subprocess.run(["gpgconf", "--kill", "all"], env=os.environ | {"GNUPGHOME": str(home_dir)}, check=False)


REPO = "chargecast/app"
REFUSED_UNSIGNED = "Source image rejected: A signature was required, but no signature exists"


@pytest.fixture(scope="module")
def signed(registry: Registry) -> str:
    """The real image pushed with the README's command, signed; returns repo@digest."""
    dest = f"{registry.host}/{REPO}:1.0"
    proc = registry.run(str(SCRIPT), "push", IMAGE, dest, "--sign-by", registry.fingerprint)
    assert proc.returncode == 0, proc.stderr
    ref = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"{re.escape(registry.host)}/{REPO}@sha256:[0-9a-f]{{64}}", ref), proc.stdout
    return ref


def refusal(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, f"the pull was not refused: {proc.stdout}"
    print(f"refused: {proc.stderr.strip()}")
    return proc.stderr


@pytest.mark.container
def test_signed_image_pulls_by_tag_and_by_digest(registry: Registry, signed: str) -> None:
    digest = signed.split("@", 1)[1]
    signatures = list(registry.lookaside.glob(f"{REPO}@sha256=*/signature-*"))
    assert [p.parent.name for p in signatures] == [f"app@{digest.replace(':', '=')}"], signatures
    local_id = sh("podman", "image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip()
    for ref in (f"{registry.host}/{REPO}:1.0", signed):
        proc = registry.pull(ref)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == local_id  # the very image that was built and signed


@pytest.mark.container
def test_unsigned_image_is_refused(registry: Registry, signed: str, tmp_path: Path) -> None:
    """A changed image (one label more) pushed without the key; the same pull, policy off, works."""
    (tmp_path / "Containerfile").write_text(f"FROM {IMAGE}\nLABEL tampered=yes\n")
    tampered = "localhost/chargecast:supply-tampered"
    sh("podman", "build", "--quiet", "-t", tampered, str(tmp_path))
    try:
        registry.push_unsigned(tampered, f"{registry.host}/{REPO}:1.1")
        assert REFUSED_UNSIGNED in refusal(registry.pull(f"{registry.host}/{REPO}:1.1"))
        anything = tmp_path / "accept-anything.json"
        anything.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        ref = f"{registry.host}/{REPO}:1.1"
        registry.pulled.append(ref)
        control = registry.run("podman", "pull", "--quiet", "--signature-policy", str(anything), ref)
        assert control.returncode == 0, control.stderr  # the refusal is the policy's, not a broken image
    finally:
        sh("podman", "rmi", "--force", tampered, check=False)


@pytest.mark.container
def test_retagged_copy_is_refused(registry: Registry, signed: str) -> None:
    """The signed bytes under a name the signature does not carry.

    Signatures are stored per repository and digest, so a new tag in the same repository finds
    the release signature, whose identity names tag 1.0: refused. Another repository has none;
    copying the release signature beside it does not help either, for the same reason.
    """
    digest = signed.split("@", 1)[1]
    same_repo = f"{registry.host}/{REPO}:latest"
    registry.push_unsigned(IMAGE, same_repo)
    expected = f"Signature for identity {registry.host}/{REPO}:1.0 is not accepted"
    assert expected in refusal(registry.pull(same_repo))
    other = f"{registry.host}/mirror/app:1.0"
    registry.push_unsigned(IMAGE, other)
    assert REFUSED_UNSIGNED in refusal(registry.pull(other))
    original = registry.lookaside / f"{REPO}@{digest.replace(':', '=')}"
    shutil.copytree(original, registry.lookaside / f"mirror/app@{digest.replace(':', '=')}")
    assert expected in refusal(registry.pull(other))
    assert registry.pull(f"{registry.host}/{REPO}:1.0").returncode == 0  # the original still pulls


@pytest.mark.container
def test_signature_by_another_key_is_refused(registry: Registry, signed: str) -> None:
    """Someone with their own key and write access to the store signs a copy: refused."""
    dest = f"{registry.host}/{REPO}:evil"
    proc = registry.run(
        str(SCRIPT), "push", IMAGE, dest, "--sign-by", registry.attacker_fingerprint, gnupg=registry.attacker_gnupg
    )
    assert proc.returncode == 0, proc.stderr
    message = refusal(registry.pull(dest))
    assert "Source image rejected: Invalid GPG signature" in message, message
    assert registry.attacker_fingerprint in message, message  # gpg knows no such public key (NO_PUBKEY)
