"""``chargecast deploy teardown``: remove everything ``deploy gke`` created, so a demo costs nothing.

The order follows what depends on what. The Gateway (and a LoadBalancer Service) go first, while
the cluster still runs the controllers that remove the load balancer they made: forwarding rule,
proxies, URL map, backend service (IAP's grants live on it), network endpoint groups. Only then
are the certificate map and the Cloud Armor policy unused, and the static IP released. Each step
tolerates what is already gone, and a failing step does not stop the others: all are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from chargecast.deploy.identity import SQL_ROLE
from chargecast.deploy.names import APP, project_error
from chargecast.deploy.options import (
    ARMOR_POLICY,
    CERT_MAP,
    CERT_MAP_ENTRY,
    CERTIFICATE,
    DNS_AUTH,
    STATIC_IP,
    gsa_email,
)
from chargecast.deploy.plan import Plan, Step

# What the tools print when the thing to delete is not there (compared without case).
GONE = ("not_found", "not found", "does not exist", "doesn't have a resource type")
CM = ("gcloud", "certificate-manager")
IN_USE = (
    "it is still in use by the load balancer the Gateway made: see `gcloud compute forwarding-rules list` and "
    "`gcloud compute target-https-proxies list` (names start with gkegw), delete those, then run teardown again"
)


@dataclass(frozen=True)
class TeardownOptions:
    project: str
    region: str = "us-central1"
    cluster: str = APP
    repository: str = APP
    cloudsql_instance: str | None = None

    def __post_init__(self) -> None:
        error = project_error(self.project)
        if error:
            raise ValueError(error)
        if ":" in self.project:
            raise ValueError("domain-scoped projects (example.com:name) are not supported, as by deploy gke")


def _delete(name: str, argv: tuple[str, ...], why: str, *, hint: str = "", when: str = "") -> Step:
    return Step(name, argv, why, hint=hint, when=when, gone_if=GONE)


def _in_cluster(o: TeardownOptions) -> list[Step]:
    k = ("--ignore-not-found", "--wait=true")
    return [
        Step(
            "find cluster",
            (
                "gcloud",
                "container",
                "clusters",
                "list",
                f"--filter=name={o.cluster}",
                "--format=value(location)",
                "--limit=1",
            ),
            "an Autopilot cluster is regional, a Standard one zonal: ask where it is rather than guess (the first "
            "of that name; run teardown again for another)",
            capture="CLUSTER_LOCATION",
        ),
        Step(
            "get credentials",
            ("gcloud", "container", "clusters", "get-credentials", o.cluster, "--location=${CLUSTER_LOCATION}"),
            "points kubectl at the cluster, to delete the objects that own Google Cloud resources",
            when="CLUSTER_LOCATION",
        ),
        _delete(
            "delete Gateway",
            (
                "kubectl",
                "delete",
                f"gateway/{APP}",
                f"httproute/{APP}",
                f"httproute/{APP}-redirect",
                *k,
                "--timeout=15m",
            ),
            "the Gateway controller removes the global load balancer it made, which frees the certificate map, "
            "the Cloud Armor policy and the static IP; a cluster deleted first can leave it behind, still billed",
            when="CLUSTER_LOCATION",
        ),
        _delete(
            "delete Service",
            ("kubectl", "delete", f"service/{APP}", *k, "--timeout=10m"),
            "a LoadBalancer Service (--expose loadbalancer) takes its TCP load balancer with it, and a Service "
            "behind the Gateway its network endpoint groups",
            when="CLUSTER_LOCATION",
        ),
        _delete(
            "delete cluster",
            ("gcloud", "container", "clusters", "delete", o.cluster, "--location=${CLUSTER_LOCATION}", "--quiet"),
            "nodes or pods, the control plane fee and every object inside (Secrets, policies) go with it "
            "(takes 5-10 minutes)",
            when="CLUSTER_LOCATION",
        ),
    ]


def _identity(o: TeardownOptions) -> list[Step]:
    account = gsa_email(o.project)
    steps = []
    if o.cloudsql_instance:
        steps.append(
            _delete(
                "delete Cloud SQL instance",
                ("gcloud", "sql", "instances", "delete", o.cloudsql_instance, "--quiet"),
                "billed every hour it exists, used or not; this deletes the audit log in it for good",
            )
        )
    return [
        *steps,
        _delete(
            "remove Cloud SQL client grant",
            (
                "gcloud",
                "projects",
                "remove-iam-policy-binding",
                o.project,
                f"--role={SQL_ROLE}",
                f"--member=serviceAccount:{account}",
                "--condition=None",
                "--format=value(etag)",
            ),
            "before the account goes, or the project's policy keeps a deleted: member forever",
        ),
        _delete(
            "delete service account",
            ("gcloud", "iam", "service-accounts", "delete", account, "--quiet"),
            "the pods' Google identity; its Workload Identity binding is part of it and goes too",
        ),
    ]


def _edge() -> list[Step]:
    return [
        _delete(
            "delete certificate map entry",
            (*CM, "maps", "entries", "delete", CERT_MAP_ENTRY, f"--map={CERT_MAP}", "--quiet"),
            "it refers to the certificate, which cannot go while it does",
        ),
        _delete(
            "delete certificate map",
            (*CM, "maps", "delete", CERT_MAP, "--quiet"),
            "unused once the Gateway's load balancer and the entry are gone",
            hint=IN_USE,
        ),
        _delete(
            "delete certificate",
            (*CM, "certificates", "delete", CERTIFICATE, "--quiet"),
            "Google-managed certificates beyond the first 100 are billed monthly",
        ),
        _delete(
            "delete DNS authorization",
            (*CM, "dns-authorizations", "delete", DNS_AUTH, "--quiet"),
            "after the certificate that uses it; remove its CNAME record from your DNS too",
        ),
        _delete(
            "delete Cloud Armor policy",
            ("gcloud", "compute", "security-policies", "delete", ARMOR_POLICY, "--quiet"),
            "billed monthly per policy and rule; unused once the backend service is gone",
            hint=IN_USE,
        ),
        _delete(
            "release static IP",
            ("gcloud", "compute", "addresses", "delete", STATIC_IP, "--global", "--quiet"),
            "a reserved address is billed by the hour, in use or not; remove its A record from your DNS too",
            hint=IN_USE,
        ),
    ]


def plan_teardown(o: TeardownOptions) -> Plan:
    """Everything a deploy made, in an order that never deletes a thing something still uses."""
    steps = [
        Step(
            "check tools",
            (),
            "every later step calls one of these",
            tools=("gcloud", "gke-gcloud-auth-plugin", "kubectl"),
        ),
        Step(
            "check login",
            ("gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"),
            "gcloud must act as someone allowed to delete in the project",
            hint="log in with `gcloud auth login`, then run this command again",
            require_output=True,
        ),
        Step(
            "check project",
            ("gcloud", "projects", "describe", o.project, "--format=value(projectId)"),
            "a mistyped project fails here, before anything is deleted anywhere",
            require_output=True,
        ),
        *_in_cluster(o),
        *_identity(o),
        *_edge(),
        _delete(
            "delete repository",
            ("gcloud", "artifacts", "repositories", "delete", o.repository, f"--location={o.region}", "--quiet"),
            "the repository, not image by image: stored images are billed per GB and month, one call removes "
            "them all (other images pushed there too), and the next deploy creates it again",
        ),
    ]
    return Plan(
        "deploy teardown",
        tuple(steps),
        done=(
            "Everything chargecast deploy created is gone. To check: gcloud compute forwarding-rules list; "
            "gcloud compute addresses list; gcloud compute network-endpoint-groups list; gcloud container "
            "clusters list; gcloud certificate-manager certificates list. With --build cloud, Cloud Build "
            f"kept the uploaded sources: gcloud storage rm --recursive gs://{o.project}_cloudbuild"
        ),
        retry="Run the same command again after the fix: what is already gone is skipped.",
        keep_going=True,
        env=(("CLOUDSDK_CORE_PROJECT", o.project),),
    )
