"""The plans of ``chargecast deploy``: put the service on Google Kubernetes Engine, show its state,
roll it back.

Each step comes from a small builder named after it, and :func:`plan_gke` reads as the procedure:
check, enable, create what is missing, build, push, render, then the load balancer's address,
certificate and Cloud Armor policy, the cluster and its identity, deploy by digest, wait. The
default is the secure path (a Gateway: HTTPS only, Cloud Armor, optionally IAP); ``--expose
loadbalancer`` keeps the tutorial's plain-HTTP demo. Everything is pure: nothing here runs or reads
anything. The project reaches every command through the plan's environment
(``CLOUDSDK_CORE_PROJECT``), so the user's gcloud configuration is never changed.
"""

from __future__ import annotations

from chargecast.deploy.cloudsql import cloudsql_steps
from chargecast.deploy.edge import edge_steps, wait_for_certificate, wait_for_gateway
from chargecast.deploy.iap import clear_audience, iap_access_steps, iap_secret_steps
from chargecast.deploy.identity import identity_steps
from chargecast.deploy.modelkey import model_key_steps
from chargecast.deploy.names import APP, PROJECT_RULE, project_error
from chargecast.deploy.options import LB_OVERLAY, OVERLAY, GkeOptions
from chargecast.deploy.plan import Plan, Poll, Step
from chargecast.deploy.wrapper import GKE_IMAGE_PLACEHOLDER, wrapper_kustomization

__all__ = [
    "APP",
    "GKE_IMAGE_PLACEHOLDER",
    "LB_OVERLAY",
    "OVERLAY",
    "PROJECT_RULE",
    "GkeOptions",
    "plan_gke",
    "plan_rollback",
    "plan_status",
    "project_error",
    "wrapper_kustomization",
]

SELECTOR = f"app.kubernetes.io/name={APP}"
DEPLOYMENT = f"deployment/{APP}"
# How long to wait for the load balancer's address: 60 polls, 5 s apart.
IP_POLLS = 60
IP_POLL_SECONDS = 5.0
UNENCRYPTED = (
    "WARNING: --expose loadbalancer serves plain HTTP. Every forecast, the patient records sent for it and "
    "any API key cross the internet unencrypted, and anyone who can reach the IP can call the service. "
    "For a demo only; leave out --expose for HTTPS."
)
# (API, what to call it) and when a deploy needs it.
APIS = (
    ("container.googleapis.com", "GKE"),
    ("artifactregistry.googleapis.com", "Artifact Registry"),
    ("iam.googleapis.com", "IAM"),
    ("iamcredentials.googleapis.com", "IAM Service Account Credentials (Workload Identity)"),
)


# -- the steps of `deploy gke`, in the order they run -----------------------------------------------


def check_tools(o: GkeOptions) -> Step:
    tools = ("gcloud", "gke-gcloud-auth-plugin", "kubectl") + (() if o.build == "cloud" else ("docker",))
    return Step("check tools", (), "every later step calls one of these", tools=tools)


def check_login() -> Step:
    return Step(
        "check login",
        ("gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"),
        "gcloud must act as someone allowed to create clusters in the project",
        hint="log in with `gcloud auth login`, then run this command again",
        require_output=True,
    )


def check_project(o: GkeOptions) -> Step:
    return Step(
        "check project",
        ("gcloud", "projects", "describe", o.project, "--format=value(projectId)"),
        "a mistyped or inaccessible project fails here in seconds, before anything is created",
        hint=f"check the ID with `gcloud projects list`, or create it: `gcloud projects create {o.project}`",
        require_output=True,
    )


def enable_apis(o: GkeOptions) -> Step:
    wanted = list(APIS)
    if o.gateway:
        wanted += [
            ("compute.googleapis.com", "Compute Engine"),
            ("certificatemanager.googleapis.com", "Certificate Manager"),
        ]
    if o.iap:
        wanted.append(("iap.googleapis.com", "IAP"))
    if o.build == "cloud":
        wanted.append(("cloudbuild.googleapis.com", "Cloud Build"))
    if o.cloudsql_instance:
        wanted.append(("sqladmin.googleapis.com", "Cloud SQL Admin"))
    names = [name for _, name in wanted]
    return Step(
        "enable APIs",
        ("gcloud", "services", "enable", *(api for api, _ in wanted)),
        ", ".join(names[:-1]) + " and " + names[-1] + " are off in a new project",
        hint="the project needs billing: https://console.cloud.google.com/billing/linkedaccount",
    )


def create_repository(o: GkeOptions) -> Step:
    return Step(
        "create repository",
        (
            "gcloud",
            "artifacts",
            "repositories",
            "create",
            o.repository,
            "--repository-format=docker",
            f"--location={o.region}",
            "--description=chargecast images",
        ),
        "images live in Artifact Registry, next to the cluster",
        skip_if=("gcloud", "artifacts", "repositories", "describe", o.repository, f"--location={o.region}"),
    )


def build_in_the_cloud(o: GkeOptions) -> Step:
    return Step(
        "build image",
        ("gcloud", "builds", "submit", f"--tag={o.ref}", str(o.root)),
        "Cloud Build builds and pushes the image; no Docker needed here",
        hint=f"the build context {o.root} needs the Dockerfile",
    )


def build_and_push_here(o: GkeOptions) -> list[Step]:
    return [
        Step(
            "configure docker",
            ("gcloud", "auth", "configure-docker", f"{o.region}-docker.pkg.dev", "--quiet"),
            "docker push authenticates to Artifact Registry through gcloud",
        ),
        Step(
            "build image",
            ("docker", "build", "--platform=linux/amd64", f"--tag={o.ref}", str(o.root)),
            "GKE nodes are x86-64, whatever this machine is",
            hint=f"the build context {o.root} needs the Dockerfile; is the Docker daemon running?",
        ),
        Step("push image", ("docker", "push", o.ref), "the cluster pulls from Artifact Registry"),
    ]


def resolve_digest(o: GkeOptions) -> Step:
    return Step(
        "resolve digest",
        ("gcloud", "artifacts", "docker", "images", "describe", o.ref, "--format=value(image_summary.digest)"),
        "deploy the exact bytes just pushed: a tag can move, a digest cannot",
        hint=f"the push did not land; see what is there: `gcloud artifacts docker images list {o.image}`",
        capture="DIGEST",
        require_output=True,
    )


def render_manifests(o: GkeOptions) -> Step:
    return Step(
        "render manifests",
        ("kubectl", "kustomize", "${WORKDIR}"),
        f"the {o.overlay.name} overlay with this deploy's digest and names; rendered before anything slow is "
        "created, so a broken manifest fails in seconds",
        hint=f"check that `kubectl kustomize {o.overlay}` works in the repository",
        copies=(("k8s", o.root / "deploy" / "k8s"),),
        files=(("kustomization.yaml", wrapper_kustomization(o)),),
        capture="MANIFESTS",
        must_contain=f"{o.image}@${{DIGEST}}",
        # The secure path has no public TCP load balancer: only the Gateway faces the internet.
        must_lack="type: LoadBalancer" if o.gateway else "",
    )


def create_cluster(o: GkeOptions) -> Step:
    where = (o.cluster, f"--location={o.location}")
    if o.nodes is None:
        create: tuple[str, ...] = ("gcloud", "container", "clusters", "create-auto", *where)
        why = (
            "Autopilot: Google runs the nodes and bills per pod; the Gateway API, Workload Identity and "
            "NetworkPolicy enforcement (Dataplane V2) are always on"
        )
    else:
        create = ("gcloud", "container", "clusters", "create", *where, f"--num-nodes={o.nodes}")
        create += ("--enable-managed-prometheus", f"--workload-pool={o.workload_pool}", "--enable-dataplane-v2")
        why = (
            f"a Standard cluster of {o.nodes} nodes, with managed Prometheus for the PodMonitoring, Workload "
            "Identity for the pods' Google service account and Dataplane V2 to enforce the NetworkPolicy"
        )
        if o.gateway:
            create += ("--gateway-api=standard",)
            why += "; --gateway-api=standard installs the Gateway API"
    return Step(
        "create cluster",
        create,
        why + " (takes 5-10 minutes)",
        hint="check quotas and billing in the console; with --nodes, pass --zone if that zone does not exist",
        skip_if=("gcloud", "container", "clusters", "describe", *where, "--format=value(name)"),
    )


def get_credentials(o: GkeOptions) -> Step:
    return Step(
        "get credentials",
        ("gcloud", "container", "clusters", "get-credentials", o.cluster, f"--location={o.location}"),
        "points kubectl at the cluster",
    )


def apply_manifests(o: GkeOptions) -> Step:
    update = f"`gcloud container clusters update {o.cluster} --location={o.location}"
    hint = f"if PodMonitoring is unknown, turn on managed Prometheus: {update} --enable-managed-prometheus`"
    if o.gateway:
        hint += f"; if Gateway or GCPBackendPolicy is unknown, add the Gateway API: {update} --gateway-api=standard`"
    return Step(
        "apply manifests",
        ("kubectl", "apply", "-f", "-"),
        "creates or updates every object; the Deployment rolls out the new image",
        hint=hint,
        stdin="${MANIFESTS}",
    )


def wait_for_rollout(why: str, hint: str) -> Step:
    return Step("wait for rollout", ("kubectl", "rollout", "status", DEPLOYMENT, "--timeout=5m"), why, hint=hint)


def wait_for_ip() -> Step:
    return Step(
        "wait for external IP",
        ("kubectl", "get", "service", APP, "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"),
        "Google Cloud assigns the load balancer's address a minute or two after the Service exists",
        hint=f"see `kubectl describe service {APP}` for load balancer events",
        capture="EXTERNAL_IP",
        poll=Poll(IP_POLLS, IP_POLL_SECONDS),
    )


def warn_unencrypted() -> Step:
    return Step("warning", (), "said before anything is created, so it can still be stopped", say=UNENCRYPTED)


def _ending(o: GkeOptions) -> tuple[list[Step], str]:
    """The waits after the rollout, and what the command prints when all went well."""
    pinned = f"({o.image}@${{DIGEST}})"
    if not o.gateway:
        return [wait_for_ip()], f"chargecast is serving at http://${{EXTERNAL_IP}}/ {pinned}\n{UNENCRYPTED}"
    done = f"chargecast is serving at https://{o.domain}/ {pinned}"
    if o.iap:
        done += "\nbehind IAP: only " + ", ".join(o.iap.members) + " get through"
    return [wait_for_gateway(), *iap_access_steps(o), wait_for_certificate(o)], done


def plan_gke(o: GkeOptions) -> Plan:
    """The whole deployment, from an empty project to a URL."""
    build = [build_in_the_cloud(o)] if o.build == "cloud" else build_and_push_here(o)
    rollout = wait_for_rollout(
        "returns once the new pods are ready and the old ones gone",
        hint=f"look at `kubectl get pods -l {SELECTOR}` and `kubectl describe {DEPLOYMENT}`; "
        "`chargecast deploy rollback` returns to the previous version",
    )
    instance, access = cloudsql_steps(o)
    ending, done = _ending(o)
    if o.model_key:
        done += f"\nsigned models only: every pod checks the model's signature with {o.model_key.fingerprint}"
    steps = [
        *([] if o.gateway else [warn_unencrypted()]),
        check_tools(o),
        check_login(),
        check_project(o),
        enable_apis(o),
        create_repository(o),
        *build,
        resolve_digest(o),
        render_manifests(o),  # before anything slow: a broken manifest fails in seconds
        *edge_steps(o),
        create_cluster(o),
        *instance,
        *identity_steps(o),
        get_credentials(o),
        *access,
        *(iap_secret_steps(o.iap) if o.iap else []),
        *(model_key_steps(o.model_key) if o.model_key else []),
        apply_manifests(o),
        *([] if o.iap else [clear_audience()]),
        rollout,
        *ending,
    ]
    return Plan(
        "deploy gke",
        tuple(steps),
        done=done,
        retry="Every step is safe to repeat: after the fix, run the same command again.",
        env=(("CLOUDSDK_CORE_PROJECT", o.project),),
    )


# -- status and rollback: kubectl's current context ------------------------------------------------


def plan_status() -> Plan:
    """How the deployment in kubectl's current context is doing."""
    return Plan(
        "deploy status",
        (
            Step("check tools", (), "both steps call kubectl", tools=("kubectl",)),
            Step(
                "rollout status",
                ("kubectl", "rollout", "status", DEPLOYMENT, "--timeout=2m"),
                "waits for a rollout in progress; fails if it is stuck",
                hint=f"look at `kubectl get pods -l {SELECTOR}` and `kubectl describe {DEPLOYMENT}`",
            ),
            Step(
                "list objects",
                ("kubectl", "get", "deploy,hpa,pods,svc", "-l", SELECTOR),
                "replicas, autoscaler target, pod health and the external IP at a glance",
            ),
        ),
    )


def plan_rollback(revision: int | None = None) -> Plan:
    """Back to the previous ReplicaSet (or a given revision), then wait until it serves."""
    undo: tuple[str, ...] = ("kubectl", "rollout", "undo", DEPLOYMENT)
    if revision is not None:
        undo = (*undo, f"--to-revision={revision}")
    return Plan(
        "deploy rollback",
        (
            Step("check tools", (), "both steps call kubectl", tools=("kubectl",)),
            Step(
                "undo rollout",
                undo,
                "the previous pod template (image digest included) is kept as an old ReplicaSet",
                hint=f"`kubectl rollout history {DEPLOYMENT}` lists the revisions there are",
            ),
            wait_for_rollout(
                "the same rolling update as a deploy: capacity never drops",
                hint=f"look at `kubectl get pods -l {SELECTOR}`",
            ),
        ),
        done="rolled back; the next `chargecast deploy gke` rolls forward again",
    )
