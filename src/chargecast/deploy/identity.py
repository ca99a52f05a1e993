"""Workload Identity: the pods act as the Google service account chargecast@PROJECT, and no key
file for it ever exists. The Kubernetes ServiceAccount default/chargecast names it in its
``iam.gke.io/gcp-service-account`` annotation; one IAM binding lets exactly that Kubernetes
account act as it.

The service itself calls no Google API, so the account holds no project role at all, except
Cloud SQL Client when the audit log goes to Cloud SQL (the proxy in each pod connects as it).
"""

from __future__ import annotations

from chargecast.deploy.names import APP
from chargecast.deploy.options import GSA_NAME, NAMESPACE, GkeOptions
from chargecast.deploy.plan import Step

SQL_ROLE = "roles/cloudsql.client"


def create_service_account(o: GkeOptions) -> Step:
    return Step(
        "create service account",
        ("gcloud", "iam", "service-accounts", "create", GSA_NAME, "--display-name=chargecast pods"),
        f"the pods' Google identity, {o.service_account}; it never gets a key",
        skip_if=("gcloud", "iam", "service-accounts", "describe", o.service_account, "--format=value(email)"),
    )


def allow_kubernetes_account(o: GkeOptions) -> Step:
    member = f"serviceAccount:{o.workload_pool}[{NAMESPACE}/{APP}]"
    return Step(
        "allow Kubernetes account",
        (
            "gcloud",
            "iam",
            "service-accounts",
            "add-iam-policy-binding",
            o.service_account,
            "--role=roles/iam.workloadIdentityUser",
            f"--member={member}",
            "--format=value(etag)",
        ),
        f"only the Kubernetes service account {NAMESPACE}/{APP} may act as it; the cluster's Workload Identity "
        "pool exists once the cluster does, so this comes after it. Adding a binding that exists changes nothing",
        hint="a service account just created can take a minute to be visible everywhere: run the same command "
        "again. Granting needs iam.serviceAccounts.setIamPolicy (roles/iam.serviceAccountAdmin)",
    )


def grant_sql_client(o: GkeOptions) -> Step:
    return Step(
        "grant Cloud SQL client",
        (
            "gcloud",
            "projects",
            "add-iam-policy-binding",
            o.project,
            f"--role={SQL_ROLE}",
            f"--member=serviceAccount:{o.service_account}",
            "--condition=None",
            "--format=value(etag)",
        ),
        "the Cloud SQL proxy in each pod connects as the pods' service account; adding a binding that exists "
        "changes nothing",
        hint="granting needs resourcemanager.projects.setIamPolicy "
        "(roles/owner or roles/resourcemanager.projectIamAdmin)",
    )


def identity_steps(o: GkeOptions) -> list[Step]:
    """After the cluster: its Workload Identity pool must exist before a binding can name it."""
    steps = [create_service_account(o), allow_kubernetes_account(o)]
    return steps + ([grant_sql_client(o)] if o.cloudsql_instance else [])
