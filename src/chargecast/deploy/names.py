"""The rules a name given to ``deploy gke`` must follow, each returning why a value breaks it.

Every function returns None for a good value and one sentence naming the rule otherwise, so the
command line and :class:`~chargecast.deploy.options.GkeOptions` refuse bad input the same way.
"""

from __future__ import annotations

import re

APP = "chargecast"
PROJECT_RULE = (
    "a Google Cloud project ID has 6 to 30 characters: lowercase letters, digits and hyphens, "
    "starting with a letter and not ending with a hyphen"
)
DOMAIN_RULE = (
    "a domain name is 2 or more labels separated by dots, each 1 to 63 lowercase letters, digits "
    "and hyphens, not starting or ending with a hyphen, 253 characters at most, with a top-level "
    "label that is not all digits (no IP addresses, no wildcards, no trailing dot)"
)
MEMBER_RULE = "each member is user:EMAIL, group:EMAIL, serviceAccount:EMAIL or domain:DOMAIN, separated by commas"
# Cloud Armor accepts only these windows for a rate limit threshold and for a ban.
ARMOR_INTERVALS = (10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, 3600)
BAN_SECONDS = (60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, 3600)
# An OAuth 2.0 client ID as the Google Cloud console shows it.
CLIENT_ID = r"[0-9]+-[a-z0-9]+\.apps\.googleusercontent\.com"

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+", re.ASCII)
_KINDS = ("user", "group", "serviceAccount", "domain")


def project_error(project: str) -> str | None:
    """Why ``project`` is no project ID, rule included; None when it is one.

    A legacy domain-scoped ID (``example.com:name``) passes.
    """
    problem = _project_problem(project)
    return f"invalid project ID {project!r}: it {problem}; {PROJECT_RULE}" if problem else None


def _project_problem(project: str) -> str | None:
    domain, colon, name = project.rpartition(":")
    if colon and not re.fullmatch(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?", domain):
        return f"has an invalid domain prefix {domain!r}"
    if not 6 <= len(name) <= 30:
        return f"has {len(name)} characters"
    bad = sorted(set(re.sub(r"[a-z0-9-]", "", name)))
    if bad:
        return "contains " + ", ".join(repr(c) for c in bad)
    if not name[0].isalpha():
        return f"starts with {name[0]!r}"
    if name.endswith("-"):
        return "ends with a hyphen"
    return None


def domain_error(domain: str) -> str | None:
    """Why ``domain`` cannot name the service (certificate, DNS records, HTTPRoute hostnames)."""
    problem = _domain_problem(domain)
    return f"invalid domain {domain!r}: it {problem}; {DOMAIN_RULE}" if problem else None


def _domain_problem(domain: str) -> str | None:
    if len(domain) > 253:
        return f"has {len(domain)} characters"
    if domain.endswith("."):
        return "ends with a dot"
    labels = domain.split(".")
    if len(labels) < 2:
        return "has only one label"
    for label in labels:
        if not _LABEL.fullmatch(label):
            return f"has the label {label!r}"
    if labels[-1].isdigit():
        return "ends in an all-digit label (an IP address?)"
    return None


def members_error(members: tuple[str, ...]) -> str | None:
    """Why a list of IAP members is refused; None when every one is a principal IAM accepts."""
    if not members:
        return f"no members given; {MEMBER_RULE}"
    for member in members:
        kind, colon, who = member.partition(":")
        if not colon or kind not in _KINDS:
            prefixes = "user:, group:, serviceAccount: or domain:"
            return f"invalid member {member!r}: it does not start with {prefixes}; {MEMBER_RULE}"
        valid = domain_error(who) is None if kind == "domain" else _EMAIL.fullmatch(who) is not None
        if not valid:
            what = "a domain" if kind == "domain" else "an email address"
            return f"invalid member {member!r}: {who!r} is not {what}; {MEMBER_RULE}"
    return None


def split_members(text: str) -> tuple[str, ...]:
    """``a, b,,a`` -> ``("a", "b")``: blanks dropped, duplicates once, order kept."""
    return tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
