"""Signed models only, on GKE (``--model-public-key PUBLIC.pem``).

Before anything is built, the checkout's ``models/current`` (what the image bakes in) must be
signed by that key: a deploy the pods would refuse stops here, in one line. The key then goes into
the ConfigMap chargecast-model-key, which the model-key component mounts read-only into every pod
with ``CHARGECAST_MODEL_PUBLIC_KEY`` pointing at it. Only the public key: the private one stays
with whoever signs.
"""

from __future__ import annotations

from pathlib import Path

from chargecast import signing
from chargecast.deploy.options import MODEL, MODEL_KEY_CONFIGMAP, ModelKey
from chargecast.deploy.plan import Step
from chargecast.model.artifact import METADATA_FILE, SIGNATURE_FILE

FLAG = "--model-public-key"
KEY_FILE = "model-public.pem"  # in the run's WORKDIR: the text that was verified
SIGN = f"`chargecast sign {MODEL} --key PRIVATE.pem`"


def checked_key(root: Path, path: Path) -> ModelKey:
    """The key, once ``root``'s models/current is signed by it; ValueError says in one line why not."""
    try:
        key, data = signing.public_key_pem(path, FLAG)
        pem = data.decode("ascii")
    except signing.SigningError as exc:
        raise ValueError(str(exc)) from None
    except UnicodeDecodeError:
        raise ValueError(
            f"{FLAG} {path}: not ASCII; a PEM public key is (`openssl pkey -in PRIVATE.pem -pubout`)"
        ) from None
    model = root / MODEL
    where = f"{FLAG} {path} ({signing.fingerprint(key)})"
    if not (model / METADATA_FILE).is_file():
        raise ValueError(f"{where}: no model at {model} ({METADATA_FILE} missing), so nothing to check or deploy")
    try:
        signing.verify(model, key)
    except signing.UnsignedError:
        raise ValueError(
            f"{where}: {MODEL} is unsigned (no {SIGNATURE_FILE}), so the pods would refuse it; sign it first "
            f"with {SIGN}"
        ) from None
    except signing.MismatchError:
        raise ValueError(
            f"{where}: {MODEL} is not signed by this key (signed by another, or its {METADATA_FILE} changed "
            f"since), so the pods would refuse it; give the public half of the key that signed it, or {SIGN}"
        ) from None
    except signing.SigningError as exc:
        raise ValueError(f"{where}: {MODEL} would be refused: {exc}") from None
    return ModelKey(path, pem, signing.fingerprint(key))


def model_key_steps(key: ModelKey) -> list[Step]:
    """After kubectl points at the cluster, before the manifests: the ConfigMap the pods mount."""
    return [
        Step(
            "render model key",
            (
                "kubectl",
                "create",
                "configmap",
                MODEL_KEY_CONFIGMAP,
                f"--from-file=public.pem=${{WORKDIR}}/{KEY_FILE}",
                "--dry-run=client",
                "-o",
                "yaml",
            ),
            f"the public key ({key.fingerprint}) checked against {MODEL} before the build, as the ConfigMap "
            "the model-key component mounts; the private key never leaves the signer",
            files=((KEY_FILE, key.pem),),
            capture="MODEL_KEY",
            require_output=True,
        ),
        Step(
            "apply model key",
            ("kubectl", "apply", "-f", "-"),
            "before the manifests: pods that mount it cannot start without it, and each one refuses a model "
            "this key did not sign; applying it again replaces an earlier key",
            stdin="${MODEL_KEY}",
        ),
    ]
