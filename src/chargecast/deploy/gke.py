"""``chargecast deploy``: put the service on Google Kubernetes Engine, show its state, roll it back.

Split in two so the whole procedure can be read, reviewed and tested without a cloud account:

* a pure *planner* (``plan_gke``, ``plan_status``, ``plan_rollback``) turns options into an ordered
  list of ``Step`` objects, each one command with the reason it is there and how to tell that it is
  already done;
* a small *runner* (``run_plan``) executes them with ``subprocess`` and stops at the first failure
  with a message that names the step and says how to fix it.

``--dry-run`` prints the plan instead of running it. Every step is safe to repeat, so after fixing a
failure the same command simply runs again: existing repositories and clusters are skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from chargecast import __version__
from chargecast.argtypes import int_at_least, matching

APP = "chargecast"
SELECTOR = f"app.kubernetes.io/name={APP}"
DEPLOYMENT = f"deployment/{APP}"
# The image name the committed gke overlay renders; the deploy replaces it with the pushed digest.
GKE_IMAGE_PLACEHOLDER = f"REGION-docker.pkg.dev/PROJECT/REPOSITORY/{APP}"
OVERLAY = Path("deploy/k8s/overlays/gke")
# How long to wait for the load balancer's address: 60 polls, 5 s apart.
IP_POLLS = 60
IP_POLL_SECONDS = 5.0

INSTALL_HINTS = {
    "gcloud": "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install",
    "kubectl": "install it with `gcloud components install kubectl` or from https://kubernetes.io/docs/tasks/tools/",
    "gke-gcloud-auth-plugin": (
        "kubectl needs it to log in to GKE; install it with `gcloud components install gke-gcloud-auth-plugin` "
        "(or the google-cloud-cli-gke-gcloud-auth-plugin package where gcloud came from apt/dnf)"
    ),
    "docker": "install Docker (https://docs.docker.com/get-docker/), or let Cloud Build build the image: --build cloud",
}

_VAR = re.compile(r"\$\{([A-Z_]+)\}")


@dataclass(frozen=True)
class Poll:
    """Rerun a step until it prints something: for values that appear later (a load balancer IP)."""

    attempts: int
    interval: float


@dataclass(frozen=True)
class Step:
    """One command of a plan.

    Strings may hold ``${NAME}`` placeholders for values only known while running: ``WORKDIR`` (a
    temporary directory for this run) and whatever earlier steps ``capture``.
    """

    name: str
    argv: tuple[str, ...]
    why: str
    hint: str = ""  # how to fix it when it fails
    skip_if: tuple[str, ...] = ()  # a probe: when it succeeds the work is already done
    tools: tuple[str, ...] = ()  # a check step: these must be on PATH (argv is then empty)
    capture: str = ""  # keep the stripped stdout under this name
    require_output: bool = False  # an empty stdout is a failure
    must_contain: str = ""  # stdout must contain this, or the step failed
    stdin: str = ""
    files: tuple[tuple[str, str], ...] = ()  # (name in WORKDIR, text) written before the step
    copies: tuple[tuple[str, Path], ...] = ()  # (name in WORKDIR, directory) copied before the step
    poll: Poll | None = None


@dataclass(frozen=True)
class Plan:
    """What a command will do, in order, and what it prints when everything went well."""

    command: str
    steps: tuple[Step, ...]
    done: str = ""
    retry: str = ""  # what to do after fixing a failure


@dataclass(frozen=True)
class GkeOptions:
    """Everything ``deploy gke`` needs; ``tag`` and ``root`` are resolved before planning."""

    project: str
    tag: str
    root: Path
    region: str = "us-central1"
    cluster: str = APP
    repository: str = APP
    nodes: int | None = None
    zone: str | None = None
    build: Literal["docker", "cloud"] = "docker"


class DeployError(Exception):
    """A step failed; the message names it and says what to do."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step '{step}': {message}")
        self.step = step


# -- planning -------------------------------------------------------------------------------------


def image_name(o: GkeOptions) -> str:
    """The Artifact Registry path (Container Registry is shut down; this is its replacement)."""
    # A domain-scoped project "example.com:proj" is written "example.com/proj" in image paths.
    return f"{o.region}-docker.pkg.dev/{o.project.replace(':', '/')}/{o.repository}/{APP}"


def cluster_location(o: GkeOptions) -> str:
    """Autopilot clusters are regional; a Standard cluster of N nodes is zonal, so it has N nodes, not 3N."""
    if o.nodes is None:
        return o.region
    return o.zone or f"{o.region}-b"


def wrapper_kustomization(image: str) -> str:
    """A throw-away kustomization around a copy of the gke overlay that pins the image by digest."""
    return (
        "# Written by `chargecast deploy gke`: the repository's gke overlay with the image just pushed.\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n"
        f"  - k8s/{OVERLAY.relative_to('deploy/k8s').as_posix()}\n"
        "images:\n"
        f"  - name: {GKE_IMAGE_PLACEHOLDER}\n"
        f"    newName: {image}\n"
        "    digest: ${DIGEST}\n"
    )


def plan_gke(o: GkeOptions) -> Plan:
    """The whole deployment, from an empty project to a URL. Pure: runs and reads nothing."""
    registry = f"{o.region}-docker.pkg.dev"
    image = image_name(o)
    ref = f"{image}:{o.tag}"
    cloud = o.build == "cloud"
    location = cluster_location(o)
    apis = ["container.googleapis.com", "artifactregistry.googleapis.com"]
    tools = ["gcloud", "gke-gcloud-auth-plugin", "kubectl"]
    if cloud:
        apis.append("cloudbuild.googleapis.com")
    else:
        tools.append("docker")

    steps = [
        Step("check tools", (), "every later step calls one of these", tools=tuple(tools)),
        Step(
            "check login",
            ("gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"),
            "gcloud must act as someone allowed to create clusters in the project",
            hint="log in with `gcloud auth login`, then run this command again",
            require_output=True,
        ),
        Step(
            "set project",
            ("gcloud", "config", "set", "project", o.project),
            "every gcloud command below works in this project (this changes gcloud's default project)",
            hint=f"check the ID with `gcloud projects list`, or create it: `gcloud projects create {o.project}`",
        ),
        Step(
            "enable APIs",
            ("gcloud", "services", "enable", *apis),
            ("GKE, Artifact Registry and Cloud Build" if cloud else "GKE and Artifact Registry")
            + " are off in a new project",
            hint="the project needs billing: https://console.cloud.google.com/billing/linkedaccount",
        ),
        Step(
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
        ),
    ]
    if cloud:
        steps.append(
            Step(
                "build image",
                ("gcloud", "builds", "submit", f"--tag={ref}", str(o.root)),
                "Cloud Build builds and pushes the image; no Docker needed here",
                hint=f"the build context {o.root} needs the Dockerfile",
            )
        )
    else:
        steps += [
            Step(
                "configure docker",
                ("gcloud", "auth", "configure-docker", registry, "--quiet"),
                "docker push authenticates to Artifact Registry through gcloud",
            ),
            Step(
                "build image",
                ("docker", "build", "--platform=linux/amd64", f"--tag={ref}", str(o.root)),
                "GKE nodes are x86-64, whatever this machine is",
                hint=f"the build context {o.root} needs the Dockerfile; is the Docker daemon running?",
            ),
            Step("push image", ("docker", "push", ref), "the cluster pulls from Artifact Registry"),
        ]
    steps += [
        Step(
            "resolve digest",
            ("gcloud", "artifacts", "docker", "images", "describe", ref, "--format=value(image_summary.digest)"),
            "deploy the exact bytes just pushed: a tag can move, a digest cannot",
            hint=f"the push did not land; see what is there: `gcloud artifacts docker images list {image}`",
            capture="DIGEST",
            require_output=True,
        ),
        Step(
            "render manifests",
            ("kubectl", "kustomize", "${WORKDIR}"),
            "render before creating anything slow, so a broken manifest fails in seconds",
            hint=f"check that `kubectl kustomize {OVERLAY}` works in the repository",
            copies=(("k8s", o.root / "deploy" / "k8s"),),
            files=(("kustomization.yaml", wrapper_kustomization(image)),),
            capture="MANIFESTS",
            must_contain=f"{image}@${{DIGEST}}",
        ),
    ]
    describe = (
        "gcloud",
        "container",
        "clusters",
        "describe",
        o.cluster,
        f"--location={location}",
        "--format=value(name)",
    )
    if o.nodes is None:
        create: tuple[str, ...] = (
            "gcloud",
            "container",
            "clusters",
            "create-auto",
            o.cluster,
            f"--location={location}",
        )
        why = "Autopilot: Google runs the nodes and bills per pod"
    else:
        create = (
            "gcloud",
            "container",
            "clusters",
            "create",
            o.cluster,
            f"--location={location}",
            f"--num-nodes={o.nodes}",
            "--enable-managed-prometheus",
        )
        why = f"a Standard cluster of {o.nodes} nodes, with managed Prometheus for the PodMonitoring"
    steps += [
        Step(
            "create cluster",
            create,
            why + " (takes 5-10 minutes)",
            hint="check quotas and billing in the console; with --nodes, pass --zone if that zone does not exist",
            skip_if=describe,
        ),
        Step(
            "get credentials",
            ("gcloud", "container", "clusters", "get-credentials", o.cluster, f"--location={location}"),
            "points kubectl at the cluster",
        ),
        Step(
            "apply manifests",
            ("kubectl", "apply", "-f", "-"),
            "creates or updates every object; the Deployment rolls out the new image",
            hint=(
                "if PodMonitoring is unknown, turn on managed Prometheus: "
                f"`gcloud container clusters update {o.cluster} --location={location} --enable-managed-prometheus`"
            ),
            stdin="${MANIFESTS}",
        ),
        Step(
            "wait for rollout",
            ("kubectl", "rollout", "status", DEPLOYMENT, "--timeout=5m"),
            "returns once the new pods are ready and the old ones gone",
            hint=f"look at `kubectl get pods -l {SELECTOR}` and `kubectl describe {DEPLOYMENT}`; "
            "`chargecast deploy rollback` returns to the previous version",
        ),
        Step(
            "wait for external IP",
            ("kubectl", "get", "service", APP, "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"),
            "Google Cloud assigns the load balancer's address a minute or two after the Service exists",
            hint=f"see `kubectl describe service {APP}` for load balancer events",
            capture="EXTERNAL_IP",
            poll=Poll(IP_POLLS, IP_POLL_SECONDS),
        ),
    ]
    return Plan(
        "deploy gke",
        tuple(steps),
        done=f"chargecast is serving at http://${{EXTERNAL_IP}}/ ({image}@${{DIGEST}})",
        retry="Every step is safe to repeat: after the fix, run the same command again.",
    )


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
            Step(
                "wait for rollout",
                ("kubectl", "rollout", "status", DEPLOYMENT, "--timeout=5m"),
                "the same rolling update as a deploy: capacity never drops",
                hint=f"look at `kubectl get pods -l {SELECTOR}`",
            ),
        ),
        done="rolled back; the next `chargecast deploy gke` rolls forward again",
    )


# -- showing a plan ---------------------------------------------------------------------------------


def _show_arg(arg: str) -> str:
    """Shell-quote, keeping ``${NAME}`` placeholders expandable so a reader can paste the line."""
    if not _VAR.search(arg):
        return shlex.quote(arg)
    parts = []
    for i, piece in enumerate(_VAR.split(arg)):
        if i % 2:
            parts.append("${" + piece + "}")
        else:
            parts.append(re.sub(r'(["\\$`])', r"\\\1", piece))
    return '"' + "".join(parts) + '"'


def show_command(argv: Sequence[str]) -> str:
    """One command line as a shell would take it."""
    return " ".join(_show_arg(a) for a in argv)


def format_plan(plan: Plan) -> str:
    """The dry-run listing: every command in order, with why it is there."""
    lines = [
        f"chargecast {plan.command} --dry-run: these steps would run in this order. None of them was run,",
        "not even the tool and login checks (only git, to name the default tag). ${NAME} stands for a",
        "value an earlier step produces.",
    ]
    for number, step in enumerate(plan.steps, 1):
        head = f"{number:2d}. {step.name}: "
        if step.tools:
            lines.append(head + f"{', '.join(step.tools)} must be on PATH")
        else:
            lines.append(head + show_command(step.argv))
        indent = "    "
        for name, source in step.copies:
            lines.append(f"{indent}first copies {source} to ${{WORKDIR}}/{name}")
        for name, text in step.files:
            lines.append(f"{indent}first writes ${{WORKDIR}}/{name}:")
            lines += [f"{indent}  | {line}" for line in text.splitlines()]
        if step.skip_if:
            lines.append(f"{indent}skipped when this succeeds: {show_command(step.skip_if)}")
        if step.stdin:
            lines.append(f"{indent}stdin: {step.stdin}")
        if step.poll:
            lines.append(
                f"{indent}repeated every {step.poll.interval:g} s, at most {step.poll.attempts} times, "
                "until it prints something"
            )
        if step.capture:
            lines.append(f"{indent}its output becomes ${{{step.capture}}}")
        lines.append(f"{indent}# {step.why}")
    if plan.done:
        lines.append(f"Then it prints: {plan.done}")
    return "\n".join(lines)


# -- running a plan ---------------------------------------------------------------------------------


def _fill(text: str, values: Mapping[str, str]) -> str:
    return _VAR.sub(lambda m: values[m.group(1)], text)


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "".join(f"\n    {line}" for line in kept)


def _invoke(step: Step, argv: Sequence[str], *, stdin: str | None, capture: bool, err: TextIO) -> tuple[int, str, str]:
    """Run one command; returns (status, stdout, stderr tail). Output streams unless it is needed."""
    env = {**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}  # no question may block an unattended run
    try:
        if capture or stdin is not None:
            done = subprocess.run(
                argv,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            return done.returncode, done.stdout, done.stderr
        sys.stdout.flush()
        tail: deque[str] = deque(maxlen=12)
        with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) as proc:
            assert proc.stderr is not None
            for line in proc.stderr:
                err.write(line)
                tail.append(line)
            status = proc.wait()
        return status, "", "".join(tail)
    except OSError as exc:
        raise DeployError(step.name, f"could not run {argv[0]}: {exc.strerror or exc}") from None


def _fail(step: Step, argv: Sequence[str], status: int, stderr: str) -> DeployError:
    message = f"`{show_command(argv)}` exited with status {status}"
    message += _tail(stderr) if stderr.strip() else " and printed no error"
    if step.hint:
        message += f"\n  fix: {step.hint}"
    return DeployError(step.name, message)


def _run_step(
    step: Step, values: dict[str, str], workdir: Path, out: TextIO, err: TextIO, sleep: Callable[[float], None]
) -> None:
    if step.tools:
        missing = [tool for tool in step.tools if shutil.which(tool) is None]
        if missing:
            raise DeployError(
                step.name, "; ".join(f"{tool} not found on PATH; {INSTALL_HINTS[tool]}" for tool in missing)
            )
        return
    for name, source in step.copies:
        shutil.copytree(source, workdir / name, dirs_exist_ok=True)
    for name, text in step.files:
        (workdir / name).write_text(_fill(text, values), encoding="utf-8")
    if step.skip_if:
        probe = [_fill(a, values) for a in step.skip_if]
        status, _, _ = _invoke(step, probe, stdin=None, capture=True, err=err)
        if status == 0:
            print("    already there: skipped", file=out)
            return
    argv = [_fill(a, values) for a in step.argv]
    stdin = _fill(step.stdin, values) if step.stdin else None
    needs_output = bool(step.capture or step.require_output or step.must_contain or step.poll)
    attempts = step.poll.attempts if step.poll else 1
    output = ""
    for attempt in range(1, attempts + 1):
        status, stdout, stderr = _invoke(step, argv, stdin=stdin, capture=needs_output, err=err)
        if status != 0:
            raise _fail(step, argv, status, stderr)
        output = stdout.strip()
        if output or step.poll is None:
            break
        if attempt < attempts:
            sleep(step.poll.interval)
    if step.poll and not output:
        waited = step.poll.attempts * step.poll.interval
        raise DeployError(step.name, f"`{show_command(argv)}` printed nothing for {waited:g} s\n  fix: {step.hint}")
    if step.require_output and not output:
        raise DeployError(step.name, f"`{show_command(argv)}` printed nothing\n  fix: {step.hint or 'see above'}")
    if step.must_contain and _fill(step.must_contain, values) not in output:
        raise DeployError(
            step.name, f"the output lacks {_fill(step.must_contain, values)}\n  fix: {step.hint or 'see above'}"
        )
    if step.capture:
        values[step.capture] = output
    elif output:
        print(output, file=out)


def run_plan(
    plan: Plan, *, out: TextIO | None = None, err: TextIO | None = None, sleep: Callable[[float], None] | None = None
) -> dict[str, str]:
    """Run every step in order; raises DeployError at the first failure. Returns the captured values."""
    out = out or sys.stdout
    err = err or sys.stderr
    wait = sleep or time.sleep
    with tempfile.TemporaryDirectory(prefix="chargecast-deploy-") as tmp:
        values = {"WORKDIR": tmp}
        for number, step in enumerate(plan.steps, 1):
            print(f"[{number}/{len(plan.steps)}] {step.name}", file=out, flush=True)
            _run_step(step, values, Path(tmp), out, err, wait)
        if plan.done:
            print(_fill(plan.done, values), file=out)
        return values


# -- command line -----------------------------------------------------------------------------------


def default_root() -> Path:
    """The checkout this module lives in (editable install), else the working directory."""
    checkout = Path(__file__).resolve().parents[2]
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
    )
    return _execute(plan_gke(options), args.dry_run)


def _status(args: argparse.Namespace) -> int:
    return _execute(plan_status(), args.dry_run)


def _rollback(args: argparse.Namespace) -> int:
    return _execute(plan_rollback(args.to_revision), args.dry_run)


def add_deploy_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``chargecast deploy {gke,status,rollback}`` on the main parser's subcommands."""
    deploy = subparsers.add_parser("deploy", help="deploy to Google Kubernetes Engine, show status, roll back")
    sub = deploy.add_subparsers(dest="deploy_command", required=True)

    gke = sub.add_parser(
        "gke",
        help="build, push and deploy to a GKE cluster (created if missing)",
        description="Build the image, push it to Artifact Registry and deploy it by digest to a GKE cluster, "
        "creating the repository and the cluster when missing. Safe to repeat.",
    )
    gke.add_argument(
        "--project",
        required=True,
        type=matching(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]", "project ID"),
        help="Google Cloud project ID",
    )
    gke.add_argument(
        "--region",
        default="us-central1",
        type=matching(r"[a-z]+-[a-z]+[0-9]+", "region"),
        help="region of the registry and of an Autopilot cluster (default: us-central1)",
    )
    gke.add_argument(
        "--cluster",
        default=APP,
        type=matching(r"[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?", "cluster name"),
        help=f"cluster name (default: {APP})",
    )
    gke.add_argument(
        "--repository",
        default=APP,
        type=matching(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?", "repository name"),
        help=f"Artifact Registry repository (default: {APP})",
    )
    gke.add_argument(
        "--tag",
        type=matching(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", "image tag"),
        help="image tag (default: the git short SHA, else the package version)",
    )
    gke.add_argument(
        "--nodes",
        type=int_at_least(1),
        metavar="N",
        help="create a Standard cluster of N nodes in one zone instead of an Autopilot cluster",
    )
    gke.add_argument(
        "--zone",
        type=matching(r"[a-z]+-[a-z]+[0-9]+-[a-z]", "zone"),
        help="zone of the Standard cluster (default: REGION-b)",
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

    status = sub.add_parser("status", help="rollout state and the chargecast objects in kubectl's current context")
    status.add_argument("--dry-run", action="store_true", help="print the commands and run none")
    status.set_defaults(func=_status)

    rollback = sub.add_parser("rollback", help="return to the previous version and wait until it serves")
    rollback.add_argument("--to-revision", type=int_at_least(1), help="a revision from `kubectl rollout history`")
    rollback.add_argument("--dry-run", action="store_true", help="print the commands and run none")
    rollback.set_defaults(func=_rollback)
