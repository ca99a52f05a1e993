"""Identity-Aware Proxy on the Gateway (``--iap MEMBERS``): only those Google identities get through.

gcloud can no longer create the OAuth client IAP needs (the IAP OAuth Admin API stopped taking
new projects on 2026-01-19 and was shut down on 2026-03-19), so it is made in the console and
passed in: its ID on the command line, its secret in a file that only a pipe to kubectl reads.
After the load balancer exists, each member is granted access on its backend service, and the
pods learn the audience (``/projects/NUMBER/global/backendServices/ID``) that the signed header
``x-goog-iap-jwt-assertion`` must carry.
"""

from __future__ import annotations

import re
import sys

from chargecast.deploy.names import APP
from chargecast.deploy.options import NAMESPACE, GkeOptions, Iap
from chargecast.deploy.plan import Poll, Reading, Step

CONSOLE = "https://console.cloud.google.com/auth/clients"
ROLE = "roles/iap.httpsResourceAccessor"
AUDIENCE = "/projects/${PROJECT_NUMBER}/global/backendServices/${BACKEND_ID}"
BACKEND_POLLS = 60
BACKEND_POLL_SECONDS = 5.0
# GKE names a Gateway's backend service gkegw1-HASH-NAMESPACE-SERVICE-PORT-HASH.
BACKENDS_JSONPATH = r"jsonpath={.metadata.annotations.networking\.gke\.io/backend-services}"
_OURS = re.compile(rf"-{NAMESPACE}-{APP}-[0-9]+-")


def redirect_uri(client_id: str) -> str:
    """What the console's OAuth client must list as an authorised redirect URI for IAP."""
    return f"https://iap.googleapis.com/v1/oauth/clientIds/{client_id}:handleRedirect"


def pick_backend(annotation: str) -> Reading:
    """The chargecast backend service's name among those the Gateway's annotation lists."""
    names = [part.strip().rsplit("/", 1)[-1] for part in annotation.split(",") if part.strip()]
    ours = [name for name in names if _OURS.search(name)]
    if ours:
        return Reading(ours[0])
    return Reading(None, f"the Gateway lists no backend service for {NAMESPACE}/{APP} yet")


def iap_secret_steps(iap: Iap) -> list[Step]:
    return [
        Step(
            "render IAP secret",
            (sys.executable, "-m", "chargecast.deploy.iapsecret", str(iap.secret_file), iap.client_id),
            "reads the OAuth client's secret from the file into a Secret manifest: never on a command line, "
            "never printed",
            capture="IAP_SECRET",
            secret=True,
            require_output=True,
        ),
        Step(
            "apply IAP secret",
            ("kubectl", "apply", "-f", "-"),
            "the GCPBackendPolicy names this Secret; it must exist before the policy does",
            stdin="${IAP_SECRET}",
        ),
    ]


def find_backend(project: str) -> list[Step]:
    return [
        Step(
            "find backend service",
            ("kubectl", "get", f"gateway/{APP}", "-o", BACKENDS_JSONPATH),
            "IAP access and the audience are set on the load balancer's backend service, which GKE names",
            hint=f"`kubectl describe gateway {APP}` shows what the controller made so far",
            capture="BACKEND_SERVICE",
            poll=Poll(BACKEND_POLLS, BACKEND_POLL_SECONDS, read=pick_backend, until="it names the chargecast backend"),
        ),
        Step(
            "look up backend service ID",
            (
                "gcloud",
                "compute",
                "backend-services",
                "describe",
                "${BACKEND_SERVICE}",
                "--global",
                "--format=value(id)",
            ),
            "the audience of IAP's signed header names the backend service by number",
            capture="BACKEND_ID",
            require_output=True,
        ),
        Step(
            "look up project number",
            ("gcloud", "projects", "describe", project, "--format=value(projectNumber)"),
            "the audience names the project by number",
            capture="PROJECT_NUMBER",
            require_output=True,
        ),
    ]


def grant(member: str) -> Step:
    return Step(
        f"grant IAP access to {member}",
        (
            "gcloud",
            "iap",
            "web",
            "add-iam-policy-binding",
            "--resource-type=backend-services",
            "--service=${BACKEND_SERVICE}",
            f"--member={member}",
            f"--role={ROLE}",
            "--format=value(etag)",
        ),
        f"IAP lets through only who holds {ROLE} on this backend; adding a binding that exists changes nothing",
        hint="granting needs roles/iap.admin on the project",
    )


def clear_audience() -> Step:
    return Step(
        "clear IAP audience",
        ("kubectl", "set", "env", f"deployment/{APP}", "CHARGECAST_IAP_AUDIENCE-"),
        "without --iap no signed header comes, so pods must not ask for one: `kubectl apply` keeps a variable "
        "an earlier --iap deploy set with `kubectl set env`, this removes it (and does nothing when it is not set)",
    )


def iap_access_steps(o: GkeOptions) -> list[Step]:
    """After the Gateway is programmed: grants on its backend, then the audience into the pods."""
    if not o.iap:
        return []
    steps = find_backend(o.project)
    steps += [grant(member) for member in o.iap.members]
    steps.append(
        Step(
            "set IAP audience",
            ("kubectl", "set", "env", f"deployment/{APP}", f"CHARGECAST_IAP_AUDIENCE={AUDIENCE}"),
            "the pods then refuse any request whose x-goog-iap-jwt-assertion is not signed by Google for this "
            "backend, even one that reached them around the load balancer. Setting the same value again "
            "changes nothing; a new value rolls the pods",
        )
    )
    steps.append(
        Step(
            "wait for IAP rollout",
            ("kubectl", "rollout", "status", f"deployment/{APP}", "--timeout=5m"),
            "returns once every pod checks the audience",
            hint=f"look at `kubectl get pods -l app.kubernetes.io/name={APP}`",
        )
    )
    return steps
