"""The throw-away kustomization ``deploy gke`` renders: an overlay of the repository, as it is,
plus what only this deploy knows (the digest, the domain, the project's service account, the
IAP client ID, the Cloud SQL instance) and the components it asked for (cloudsql, iap, model-key).
The repository's files are never edited.
"""

from __future__ import annotations

from pathlib import Path

from chargecast.deploy.names import APP
from chargecast.deploy.options import CLOUDSQL_COMPONENT, IAP_COMPONENT, MODEL_KEY_COMPONENT, GkeOptions

# The image name the committed gke overlays render; the deploy replaces it with the pushed digest.
GKE_IMAGE_PLACEHOLDER = f"REGION-docker.pkg.dev/PROJECT/REPOSITORY/{APP}"


def _inside(path: Path) -> str:
    """deploy/k8s/x -> k8s/x: where the copy of deploy/k8s sits beside the wrapper."""
    return "k8s/" + path.relative_to("deploy/k8s").as_posix()


def _service_account(o: GkeOptions) -> str:
    return (
        "  # Workload Identity: the pods act as this Google service account; no key file exists.\n"
        "  - patch: |\n"
        "      apiVersion: v1\n"
        "      kind: ServiceAccount\n"
        "      metadata:\n"
        f"        name: {APP}\n"
        "        annotations:\n"
        f"          iam.gke.io/gcp-service-account: {o.service_account}\n"
    )


def _hostnames(domain: str) -> str:
    return (
        "  # Both routes (the service and the HTTP-to-HTTPS redirect) answer for this name only.\n"
        "  - target:\n"
        "      group: gateway.networking.k8s.io\n"
        "      kind: HTTPRoute\n"
        "    patch: |\n"
        "      - op: add\n"
        "        path: /spec/hostnames\n"
        f"        value: [{domain}]\n"
    )


def _iap_client(client_id: str) -> str:
    return (
        "  # The OAuth client made in the console; its secret is in the Secret chargecast-iap.\n"
        "  - target:\n"
        "      group: networking.gke.io\n"
        "      kind: GCPBackendPolicy\n"
        "    patch: |\n"
        "      - op: add\n"
        "        path: /spec/default/iap/clientID\n"
        f"        value: {client_id}\n"
    )


def _cloudsql_instance(connection_name: str) -> str:
    return (
        "  - patch: |\n"
        "      apiVersion: apps/v1\n"
        "      kind: Deployment\n"
        "      metadata:\n"
        f"        name: {APP}\n"
        "      spec:\n"
        "        template:\n"
        "          spec:\n"
        "            initContainers:\n"
        "              - name: cloud-sql-proxy\n"
        "                env:\n"
        "                  - name: CLOUDSQL_INSTANCE\n"
        f"                    value: {connection_name}\n"
    )


def wrapper_kustomization(o: GkeOptions) -> str:
    """The kustomization.yaml written beside a copy of deploy/k8s; ``${DIGEST}`` is filled when run."""
    wanted = ((CLOUDSQL_COMPONENT, o.cloudsql_instance), (IAP_COMPONENT, o.iap), (MODEL_KEY_COMPONENT, o.model_key))
    components = [component for component, asked in wanted if asked]
    text = (
        f"# Written by `chargecast deploy gke`: the repository's {o.overlay.name} overlay with the image just\n"
        "# pushed and this deploy's names. Rendered from a copy; the repository is never edited.\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n"
        f"  - {_inside(o.overlay)}\n"
    )
    if components:
        text += "components:\n" + "".join(f"  - {_inside(c)}\n" for c in components)
    text += f"images:\n  - name: {GKE_IMAGE_PLACEHOLDER}\n    newName: {o.image}\n    digest: ${{DIGEST}}\npatches:\n"
    text += _service_account(o)
    if o.domain:
        text += _hostnames(o.domain)
    if o.iap:
        text += _iap_client(o.iap.client_id)
    if o.cloudsql_instance:
        text += _cloudsql_instance(o.connection_name)
    return text
