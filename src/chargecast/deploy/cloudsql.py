"""The audit log on Cloud SQL for PostgreSQL (``--cloudsql-instance NAME``): the instance, its
database and user, and the Secret chargecast-audit the pods read the URL from.

The password is made here and never shown: it goes to Cloud SQL and into the Secret, and the
runner hides it from every message. The pods reach the database through the Cloud SQL Auth Proxy
sidecar (the cloudsql component), which connects as the pods' Google service account.
"""

from __future__ import annotations

import sys

from chargecast.deploy.names import APP
from chargecast.deploy.options import GkeOptions
from chargecast.deploy.plan import Step

# The Secret the pods read CHARGECAST_AUDIT_URL from, the database and its user.
AUDIT_SECRET = f"{APP}-audit"
DATABASE = APP
DB_USER = APP
AUDIT_URL = f"postgresql://{DB_USER}:${{DB_PASSWORD}}@127.0.0.1:5432/{DATABASE}"


def create_sql_instance(o: GkeOptions) -> Step:
    name = str(o.cloudsql_instance)
    return Step(
        "create Cloud SQL instance",
        (
            "gcloud",
            "sql",
            "instances",
            "create",
            name,
            "--database-version=POSTGRES_15",
            "--edition=enterprise",
            "--tier=db-f1-micro",
            f"--region={o.region}",
            "--storage-auto-increase",
        ),
        "the audit log's PostgreSQL, beside the cluster: the smallest shared-core tier, storage that grows "
        "instead of filling up (takes 5-10 minutes)",
        hint="check billing and the Cloud SQL quota; `gcloud sql instances list` shows what exists",
        skip_if=("gcloud", "sql", "instances", "describe", name, "--format=value(name)"),
    )


def create_database(o: GkeOptions) -> Step:
    where = (DATABASE, f"--instance={o.cloudsql_instance}")
    return Step(
        "create database",
        ("gcloud", "sql", "databases", "create", *where),
        "the audit log creates its own tables, inside a database of its own",
        skip_if=("gcloud", "sql", "databases", "describe", *where, "--format=value(name)"),
    )


def create_database_user(o: GkeOptions) -> Step:
    where = (DB_USER, f"--instance={o.cloudsql_instance}")
    return Step(
        "create database user",
        ("gcloud", "sql", "users", "create", *where),
        "a login of its own, not the instance's postgres superuser; its password is set below",
        skip_if=("gcloud", "sql", "users", "describe", *where, "--format=value(name)"),
    )


def secret_probe() -> tuple[str, ...]:
    """Succeeds once the Secret holds a URL: its password is then the one in use, so it is kept."""
    return ("kubectl", "get", "secret", AUDIT_SECRET, "-o", "name")


def generate_password() -> Step:
    return Step(
        "generate database password",
        (sys.executable, "-c", "import secrets; print(secrets.token_urlsafe(24))"),
        "made here, never shown: it goes to Cloud SQL and into the Secret, and is hidden from every message",
        capture="DB_PASSWORD",
        require_output=True,
        secret=True,
    )


def set_database_password(o: GkeOptions) -> Step:
    return Step(
        "set database password",
        (
            "gcloud",
            "sql",
            "users",
            "set-password",
            DB_USER,
            f"--instance={o.cloudsql_instance}",
            "--password=${DB_PASSWORD}",
        ),
        "before the Secret, so a failure in between heals on the next run (no Secret yet: a new password)",
        skip_if=secret_probe(),
    )


def render_audit_secret() -> list[Step]:
    return [
        Step(
            "render audit secret",
            (
                "kubectl",
                "create",
                "secret",
                "generic",
                AUDIT_SECRET,
                "--from-file=CHARGECAST_AUDIT_URL=${WORKDIR}/audit-url",
                "--dry-run=client",
                "-o",
                "yaml",
            ),
            "the URL goes in by file, not on kubectl's command line; the pods read it with envFrom",
            files=(("audit-url", AUDIT_URL),),
            capture="AUDIT_SECRET",
            skip_if=secret_probe(),
        ),
        Step(
            "apply audit secret",
            ("kubectl", "apply", "-f", "-"),
            "created before the Deployment, so the first pods already log to Cloud SQL",
            stdin="${AUDIT_SECRET}",
            skip_if=secret_probe(),
        ),
    ]


def cloudsql_steps(o: GkeOptions) -> tuple[list[Step], list[Step]]:
    """(after the cluster is created, after kubectl points at it): the instance, then its credentials."""
    if not o.cloudsql_instance:
        return [], []
    instance = [create_sql_instance(o), create_database(o), create_database_user(o)]
    access = [generate_password(), set_database_password(o)]
    return instance, access + render_audit_secret()
