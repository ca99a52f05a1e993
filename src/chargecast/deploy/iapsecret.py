"""The IAP OAuth client's secret: read from the file the user names, written out as the Secret
chargecast-iap (key ``key``) that the GCPBackendPolicy points at.

``deploy gke --iap`` runs ``python -m chargecast.deploy.iapsecret FILE CLIENT_ID`` and hands its
output to ``kubectl apply`` through a pipe: the secret is never on a command line, in the dry run,
or in a message. The file holds the secret alone, or is the JSON the console offers to download.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from chargecast.deploy.names import APP
from chargecast.deploy.options import IAP_SECRET

FLAG = "--iap-client-secret-file"
LARGEST = 64 * 1024  # a secret is a few dozen bytes; anything this big is the wrong file


def _from_json(data: object, client_id: str | None, path: Path) -> str:
    web = data.get("web") or data.get("installed") if isinstance(data, dict) else None
    if not isinstance(web, dict) or not isinstance(web.get("client_secret"), str):
        raise ValueError(f"{FLAG} {path}: JSON without web.client_secret; give the console's download or the secret")
    if client_id and web.get("client_id") not in (None, client_id):
        raise ValueError(f"{FLAG} {path}: it is the secret of another OAuth client than --iap-client-id {client_id}")
    return str(web["client_secret"]).strip()


def client_secret(path: Path, client_id: str | None = None) -> str:
    """The secret in ``path``; ValueError names the flag and the problem, never the content."""
    try:
        raw = path.read_bytes()[: LARGEST + 1]
    except OSError as exc:
        raise ValueError(f"{FLAG} {path}: cannot be read ({exc.strerror or exc})") from None
    if len(raw) > LARGEST:
        raise ValueError(f"{FLAG} {path}: larger than {LARGEST // 1024} KiB, so not an OAuth client secret")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{FLAG} {path}: not UTF-8 text") from None
    if text.startswith("{"):
        try:
            text = _from_json(json.loads(text), client_id, path)
        except json.JSONDecodeError:
            raise ValueError(f"{FLAG} {path}: starts like JSON but is not valid JSON") from None
    if not text:
        raise ValueError(f"{FLAG} {path}: empty; it must hold the OAuth client's secret")
    if any(c.isspace() for c in text):
        raise ValueError(f"{FLAG} {path}: holds more than one word; it must hold the OAuth client's secret alone")
    return text


def manifest(secret: str) -> str:
    """The Secret as JSON (a YAML document kubectl applies), labelled like every other object."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": IAP_SECRET, "labels": {"app.kubernetes.io/name": APP}},
            "type": "Opaque",
            "data": {"key": base64.b64encode(secret.encode()).decode()},
        }
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m chargecast.deploy.iapsecret FILE [CLIENT_ID]", file=sys.stderr)
        return 2
    try:
        secret = client_secret(Path(args[0]), args[1] if len(args) == 2 else None)
    except ValueError as exc:
        print(f"chargecast: {exc}", file=sys.stderr)
        return 2
    print(manifest(secret))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
