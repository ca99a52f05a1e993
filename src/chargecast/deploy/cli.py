"""The ``chargecast deploy {gke,status,rollback}`` command line: options in, a plan out, then
``--dry-run`` lists it or the runner runs it."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from chargecast import __version__
from chargecast.argtypes import int_at_least, matching
from chargecast.deploy.gke import APP, OVERLAY, GkeOptions, plan_gke, plan_rollback, plan_status, project_error
from chargecast.deploy.plan import Plan, format_plan
from chargecast.deploy.runner import DeployError, run_plan

# --option, default, what a valid value matches (GCP naming rules), help
NAMES: tuple[tuple[str, str | None, str, str], ...] = (
    ("--region", "us-central1", r"[a-z]+-[a-z]+[0-9]+", "region of the registry and of an Autopilot cluster"),
    ("--zone", None, r"[a-z]+-[a-z]+[0-9]+-[a-z]", "zone of the Standard cluster (default: REGION-b)"),
    ("--cluster", APP, r"[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?", "cluster name"),
    ("--repository", APP, r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?", "Artifact Registry repository"),
    ("--tag", None, r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", "image tag (default: the git short SHA, else the version)"),
    (
        "--cloudsql-instance",
        None,
        r"[a-z](?:[a-z0-9-]{0,96}[a-z0-9])?",
        "keep the audit log in this Cloud SQL for PostgreSQL instance in REGION (created if missing, "
        "db-f1-micro); without it the pods' audit log is off",
    ),
)


def default_root() -> Path:
    """The checkout this module lives in (editable install), else the working directory."""
    checkout = Path(__file__).resolve().parents[3]
    return checkout if (checkout / OVERLAY).is_dir() else Path.cwd()


def default_tag(root: Path) -> str:
    """The git short SHA (``-dirty`` with uncommitted changes), else the package version."""
    git = shutil.which("git")
    if git:
        try:
            sha = subprocess.run(
                [git, "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
            )
            if sha.returncode == 0 and sha.stdout.strip():
                changes = subprocess.run(
                    [git, "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                return sha.stdout.strip() + ("-dirty" if changes.stdout.strip() else "")
        except OSError:
            pass
    return f"v{__version__}"


def project_id(text: str) -> str:
    """argparse type: a Google Cloud project ID; a bad one is refused with the rule it breaks."""
    error = project_error(text)
    if error:
        raise argparse.ArgumentTypeError(error)
    return text


def _execute(plan: Plan, dry_run: bool) -> int:
    if dry_run:
        print(format_plan(plan))
        return 0
    try:
        run_plan(plan)
    except DeployError as exc:
        print(f"chargecast {plan.command}: {exc}", file=sys.stderr)
        if plan.retry:
            print(f"  {plan.retry}", file=sys.stderr)
        return 2
    return 0


def _gke(args: argparse.Namespace) -> int:
    root: Path = (args.source or default_root()).resolve()
    if not (root / OVERLAY / "kustomization.yaml").is_file():
        print(
            f"chargecast deploy gke: {OVERLAY} not found under {root}; run it from the chargecast checkout "
            "or pass --source",
            file=sys.stderr,
        )
        return 2
    if args.cloudsql_instance and ":" in args.project:
        print("chargecast deploy gke: --cloudsql-instance does not support domain-scoped projects", file=sys.stderr)
        return 2
    if args.zone and args.nodes is None:
        print("chargecast deploy gke: --zone is for a Standard cluster; add --nodes N", file=sys.stderr)
        return 2
    options = GkeOptions(
        project=args.project,
        tag=args.tag or default_tag(root),
        root=root,
        region=args.region,
        cluster=args.cluster,
        repository=args.repository,
        nodes=args.nodes,
        zone=args.zone,
        build=args.build,
        cloudsql_instance=args.cloudsql_instance,
    )
    return _execute(plan_gke(options), args.dry_run)


def _status(args: argparse.Namespace) -> int:
    return _execute(plan_status(), args.dry_run)


def _rollback(args: argparse.Namespace) -> int:
    return _execute(plan_rollback(args.to_revision), args.dry_run)


def _add_gke(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gke = sub.add_parser(
        "gke",
        help="build, push and deploy to a GKE cluster (created if missing)",
        description="Build the image, push it to Artifact Registry and deploy it by digest to a GKE cluster, "
        "creating the repository and the cluster when missing. Safe to repeat. The project is given to "
        "each command in its environment: gcloud's configuration is not changed.",
    )
    gke.add_argument(
        "--project",
        required=True,
        type=project_id,
        help="Google Cloud project ID: 6 to 30 lowercase letters, digits and hyphens, starting with a letter",
    )
    for flag, default, pattern, help_text in NAMES:
        shown = f"{help_text} (default: {default})" if default else help_text
        gke.add_argument(flag, default=default, type=matching(pattern, flag.removeprefix("--")), help=shown)
    gke.add_argument(
        "--nodes",
        type=int_at_least(1),
        metavar="N",
        help="create a Standard cluster of N nodes in one zone instead of an Autopilot cluster",
    )
    gke.add_argument(
        "--build",
        choices=("docker", "cloud"),
        default="docker",
        help="docker: build here and push (default); cloud: gcloud builds submit",
    )
    gke.add_argument("--source", type=Path, help="checkout with the Dockerfile and deploy/k8s (default: this one)")
    gke.add_argument("--dry-run", action="store_true", help="print every command in order and run none")
    gke.set_defaults(func=_gke)


def add_deploy_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``chargecast deploy {gke,status,rollback}`` on the main parser's subcommands."""
    deploy = subparsers.add_parser("deploy", help="deploy to Google Kubernetes Engine, show status, roll back")
    sub = deploy.add_subparsers(dest="deploy_command", required=True)
    _add_gke(sub)

    status = sub.add_parser("status", help="rollout state and the chargecast objects in kubectl's current context")
    status.add_argument("--dry-run", action="store_true", help="print the commands and run none")
    status.set_defaults(func=_status)

    rollback = sub.add_parser("rollback", help="return to the previous version and wait until it serves")
    rollback.add_argument("--to-revision", type=int_at_least(1), help="a revision from `kubectl rollout history`")
    rollback.add_argument("--dry-run", action="store_true", help="print the commands and run none")
    rollback.set_defaults(func=_rollback)
