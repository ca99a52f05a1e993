"""The ``chargecast deploy {gke,teardown,status,rollback}`` command line: options in, a plan out,
then ``--dry-run`` lists it or the runner runs it."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from chargecast import __version__
from chargecast.argtypes import int_at_least, matching
from chargecast.deploy.gke import APP, OVERLAY, GkeOptions, plan_gke, plan_rollback, plan_status
from chargecast.deploy.iap import CONSOLE, redirect_uri
from chargecast.deploy.iapsecret import client_secret
from chargecast.deploy.modelkey import checked_key
from chargecast.deploy.names import (
    ARMOR_INTERVALS,
    BAN_SECONDS,
    CLIENT_ID,
    domain_error,
    members_error,
    project_error,
    split_members,
)
from chargecast.deploy.options import Iap, Throttle
from chargecast.deploy.plan import Plan, format_plan
from chargecast.deploy.runner import DeployError, run_plan
from chargecast.deploy.teardown import TeardownOptions, plan_teardown

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


def domain(text: str) -> str:
    """argparse type: a DNS name for the certificate and the routes (case does not matter in DNS)."""
    error = domain_error(text.lower())
    if error:
        raise argparse.ArgumentTypeError(error)
    return text.lower()


def members(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated IAM members for IAP."""
    found = split_members(text)
    error = members_error(found)
    if error:
        raise argparse.ArgumentTypeError(error)
    return found


def one_of(values: tuple[int, ...], what: str, zero: str = "") -> Callable[[str], int]:
    """argparse type: a whole number among ``values`` (or 0, when ``zero`` says what 0 means)."""
    shown = (f"0 ({zero}), " if zero else "") + ", ".join(map(str, values))

    def parse(text: str) -> int:
        value = int_at_least(0)(text)
        if value not in values and not (zero and value == 0):
            raise argparse.ArgumentTypeError(f"{text} is not {what}: Cloud Armor accepts {shown}")
        return value

    return parse


def minutes(text: str) -> int:
    value = int_at_least(1)(text)
    if value > 1440:
        raise argparse.ArgumentTypeError(f"{text} must be at most 1440 (a day)")
    return value


def _iap(args: argparse.Namespace) -> Iap | None:
    """--iap and its OAuth client, checked together; the secret file is read here, never shown."""
    if args.iap is None:
        if args.iap_client_id or args.iap_client_secret_file:
            raise ValueError("--iap-client-id and --iap-client-secret-file only go with --iap MEMBERS")
        return None
    if not (args.iap_client_id and args.iap_client_secret_file):
        raise ValueError(
            "--iap needs --iap-client-id and --iap-client-secret-file: gcloud can no longer create IAP's OAuth "
            f"client (the IAP OAuth Admin API is shut down). Create a Web application client at {CONSOLE} "
            f"with the redirect URI {redirect_uri('CLIENT_ID')}, and put its secret in a file"
        )
    client_secret(args.iap_client_secret_file, args.iap_client_id)
    return Iap(args.iap, args.iap_client_id, args.iap_client_secret_file.resolve())


def _throttle(args: argparse.Namespace) -> Throttle | None:
    given = {"rate": args.rate, "interval": args.rate_interval, "ban_seconds": args.ban_seconds}
    chosen = {name: value for name, value in given.items() if value is not None}
    return Throttle(**chosen) if chosen else None


def _gke_options(args: argparse.Namespace, root: Path) -> GkeOptions:
    """Every rule across flags, before anything runs (not even git for the tag)."""
    options = GkeOptions(
        project=args.project,
        tag=args.tag or "pending",
        root=root,
        region=args.region,
        cluster=args.cluster,
        repository=args.repository,
        nodes=args.nodes,
        zone=args.zone,
        build=args.build,
        cloudsql_instance=args.cloudsql_instance,
        expose=args.expose,
        domain=args.domain,
        iap=_iap(args),
        throttle=_throttle(args),
        cert_timeout_minutes=args.cert_timeout,
    )
    if args.zone and args.nodes is None:
        raise ValueError("--zone is for a Standard cluster; add --nodes N")
    if not (root / options.overlay / "kustomization.yaml").is_file():
        raise ValueError(
            f"{options.overlay} not found under {root}; run it from the chargecast checkout or pass --source"
        )
    if args.model_public_key:
        # The image bakes in root's models/current: a model the pods would refuse stops the deploy here.
        options = dataclasses.replace(options, model_key=checked_key(root, args.model_public_key))
    return options if args.tag else dataclasses.replace(options, tag=default_tag(root))


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
    try:
        options = _gke_options(args, root)
    except ValueError as exc:
        print(f"chargecast deploy gke: {exc}", file=sys.stderr)
        return 2
    return _execute(plan_gke(options), args.dry_run)


def _teardown(args: argparse.Namespace) -> int:
    try:
        options = TeardownOptions(
            project=args.project,
            region=args.region,
            cluster=args.cluster,
            repository=args.repository,
            cloudsql_instance=args.cloudsql_instance,
        )
    except ValueError as exc:
        print(f"chargecast deploy teardown: {exc}", file=sys.stderr)
        return 2
    return _execute(plan_teardown(options), args.dry_run)


def _status(args: argparse.Namespace) -> int:
    return _execute(plan_status(), args.dry_run)


def _rollback(args: argparse.Namespace) -> int:
    return _execute(plan_rollback(args.to_revision), args.dry_run)


def _add_names(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    for flag, default, pattern, help_text in NAMES:
        if flag in names:
            shown = f"{help_text} (default: {default})" if default else help_text
            parser.add_argument(flag, default=default, type=matching(pattern, flag.removeprefix("--")), help=shown)


def _add_project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project",
        required=True,
        type=project_id,
        help="Google Cloud project ID: 6 to 30 lowercase letters, digits and hyphens, starting with a letter",
    )


def _add_edge(gke: argparse.ArgumentParser) -> None:
    """The secure path's flags: the name, the throttle, IAP, and how long to wait for the certificate."""
    gke.add_argument(
        "--expose",
        choices=("gateway", "loadbalancer"),
        default="gateway",
        help="gateway: HTTPS on --domain behind Cloud Armor (default); loadbalancer: the tutorial's plain-HTTP "
        "demo on a bare IP, unencrypted",
    )
    gke.add_argument("--domain", type=domain, help="the name to serve at, e.g. forecast.example.com (required)")
    gke.add_argument("--rate", type=int_at_least(1), help="requests each client IP may send per interval (600)")
    gke.add_argument(
        "--rate-interval",
        type=one_of(ARMOR_INTERVALS, "a Cloud Armor interval"),
        metavar="SECONDS",
        help="the interval, and so the largest burst (60)",
    )
    gke.add_argument(
        "--ban-seconds",
        type=one_of(BAN_SECONDS, "a Cloud Armor ban length", zero="no ban"),
        metavar="SECONDS",
        help="refuse a client that went over the rate everything for this long (0: only its excess; default)",
    )
    gke.add_argument(
        "--iap",
        type=members,
        metavar="MEMBERS",
        help="turn on Identity-Aware Proxy for these comma-separated user:/group:/serviceAccount:/domain: members",
    )
    gke.add_argument(
        "--iap-client-id",
        type=matching(CLIENT_ID, "OAuth client ID (NUMBER-ID.apps.googleusercontent.com)"),
        help=f"the OAuth client made for IAP at {CONSOLE}",
    )
    gke.add_argument("--iap-client-secret-file", type=Path, metavar="FILE", help="a file holding that client's secret")
    gke.add_argument(
        "--cert-timeout",
        type=minutes,
        default=60,
        metavar="MINUTES",
        help="how long to wait for the certificate to become ACTIVE (default: 60)",
    )


def _add_gke(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gke = sub.add_parser(
        "gke",
        help="build, push and deploy to a GKE cluster (created if missing), behind HTTPS by default",
        description="Build the image, push it to Artifact Registry and deploy it by digest to a GKE cluster, "
        "creating the repository and the cluster when missing. By default the service is reached only "
        "through a Gateway: HTTPS at --domain, a Google-managed certificate, a Cloud Armor throttle, and "
        "optionally IAP. Safe to repeat. The project is given to each command in its environment: gcloud's "
        "configuration is not changed.",
    )
    _add_project(gke)
    _add_names(gke, tuple(n[0] for n in NAMES))
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
    _add_edge(gke)
    gke.add_argument(
        "--model-public-key",
        type=Path,
        metavar="PUBLIC.pem",
        help="serve only models signed by this Ed25519 key: models/current must be signed by it (checked before "
        "anything is built), and the pods get it and refuse any other model (docs/signing.md)",
    )
    gke.add_argument("--source", type=Path, help="checkout with the Dockerfile and deploy/k8s (default: this one)")
    gke.add_argument("--dry-run", action="store_true", help="print every command in order and run none")
    gke.set_defaults(func=_gke)


def _add_teardown(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    teardown = sub.add_parser(
        "teardown",
        help="delete everything deploy gke created, so nothing is billed any more",
        description="Delete the Gateway and its load balancer, the cluster, the certificate and its map and DNS "
        "authorization, the Cloud Armor policy, the static IP, the pods' service account and the image "
        "repository (and the Cloud SQL instance, when named). What is already gone is skipped; a deletion "
        "that fails is reported and the others still run.",
    )
    _add_project(teardown)
    _add_names(teardown, ("--region", "--cluster", "--repository", "--cloudsql-instance"))
    teardown.add_argument("--dry-run", action="store_true", help="print every command in order and run none")
    teardown.set_defaults(func=_teardown)


def add_deploy_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``chargecast deploy {gke,teardown,status,rollback}`` on the main parser's subcommands."""
    deploy = subparsers.add_parser("deploy", help="deploy to Google Kubernetes Engine, tear down, status, roll back")
    sub = deploy.add_subparsers(dest="deploy_command", required=True)
    _add_gke(sub)
    _add_teardown(sub)

    status = sub.add_parser("status", help="rollout state and the chargecast objects in kubectl's current context")
    status.add_argument("--dry-run", action="store_true", help="print the commands and run none")
    status.set_defaults(func=_status)

    rollback = sub.add_parser("rollback", help="return to the previous version and wait until it serves")
    rollback.add_argument("--to-revision", type=int_at_least(1), help="a revision from `kubectl rollout history`")
    rollback.add_argument("--dry-run", action="store_true", help="print the commands and run none")
    rollback.set_defaults(func=_rollback)
