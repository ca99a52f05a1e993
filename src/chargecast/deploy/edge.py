"""The steps of the secure path that live outside the cluster: the load balancer's address, its
certificate, the DNS records that make both work, the Cloud Armor throttle, and the waits at the end.

All are global resources with fixed names (the manifests refer to them), each created only when
missing, so a second deploy skips them. The certificate is authorised by DNS: it can be issued
before the load balancer exists, as soon as the CNAME record is in place.
"""

from __future__ import annotations

from chargecast.deploy.certstate import read_certificate
from chargecast.deploy.names import APP
from chargecast.deploy.options import (
    ARMOR_POLICY,
    CERT_MAP,
    CERT_MAP_ENTRY,
    CERTIFICATE,
    DNS_AUTH,
    STATIC_IP,
    THROTTLE_PRIORITY,
    GkeOptions,
)
from chargecast.deploy.plan import Poll, Step

CERT_POLL_SECONDS = 30.0
CM = ("gcloud", "certificate-manager")


def reserve_ip() -> Step:
    return Step(
        "reserve static IP",
        ("gcloud", "compute", "addresses", "create", STATIC_IP, "--global", "--ip-version=IPV4"),
        "the Gateway takes this address by name, so the DNS A record stays right across redeploys "
        "and even a new cluster (about $0.01 an hour while it is not in use)",
        skip_if=("gcloud", "compute", "addresses", "describe", STATIC_IP, "--global", "--format=value(address)"),
    )


def create_dns_authorization(domain: str) -> Step:
    return Step(
        "create DNS authorization",
        (*CM, "dns-authorizations", "create", DNS_AUTH, f"--domain={domain}"),
        f"proves to the certificate authority that you control {domain}, with one CNAME record, "
        "before any traffic reaches the load balancer",
        skip_if=(*CM, "dns-authorizations", "describe", DNS_AUTH, "--format=value(name)"),
    )


def create_certificate(domain: str) -> Step:
    return Step(
        "create certificate",
        (*CM, "certificates", "create", CERTIFICATE, f"--domains={domain}", f"--dns-authorizations={DNS_AUTH}"),
        f"a Google-managed certificate for {domain}, renewed by Google; issued once the CNAME resolves",
        skip_if=(*CM, "certificates", "describe", CERTIFICATE, "--format=value(name)"),
    )


def check_certificate_domain(domain: str) -> Step:
    return Step(
        "check certificate domain",
        (*CM, "certificates", "describe", CERTIFICATE, "--format=value(managed.domains)"),
        "a certificate left by a deploy for another domain is kept by name: this says so instead of "
        "serving a certificate for the wrong name",
        hint=f"{CERTIFICATE} was made for another domain; remove the old setup with `chargecast deploy teardown` "
        "(or delete the map entry, the certificate and the DNS authorization), then deploy again",
        must_contain=domain,
    )


def create_certificate_map() -> Step:
    return Step(
        "create certificate map",
        (*CM, "maps", "create", CERT_MAP),
        f"the Gateway's networking.gke.io/certmap annotation names {CERT_MAP}: the load balancer picks the "
        "certificate from it by host name",
        skip_if=(*CM, "maps", "describe", CERT_MAP, "--format=value(name)"),
    )


def create_certificate_map_entry(domain: str) -> Step:
    where = (CERT_MAP_ENTRY, f"--map={CERT_MAP}")
    return Step(
        "create certificate map entry",
        (*CM, "maps", "entries", "create", *where, f"--hostname={domain}", f"--certificates={CERTIFICATE}"),
        f"serves {CERTIFICATE} for {domain}",
        skip_if=(*CM, "maps", "entries", "describe", *where, "--format=value(name)"),
    )


def read_dns_records() -> list[Step]:
    return [
        Step(
            "read static IP",
            ("gcloud", "compute", "addresses", "describe", STATIC_IP, "--global", "--format=value(address)"),
            "the address for the A record",
            capture="STATIC_IP",
            require_output=True,
        ),
        Step(
            "read DNS authorization record",
            (
                *CM,
                "dns-authorizations",
                "describe",
                DNS_AUTH,
                "--format=value(dnsResourceRecord.name,dnsResourceRecord.type,dnsResourceRecord.data)",
            ),
            "the CNAME record Google generated for the DNS authorization",
            capture="DNS_AUTH_RECORD",
            require_output=True,
        ),
    ]


def show_dns_records(domain: str) -> Step:
    return Step(
        "show DNS records",
        (),
        "printed now, before the cluster's 5-10 minutes: the certificate is issued only once the CNAME "
        "resolves, and the site is reachable by name only once the A record does",
        say=(
            "Add these two records where the DNS of your domain is managed (keep any others):\n"
            f"  {domain}.\tA\t${{STATIC_IP}}\n"
            "  ${DNS_AUTH_RECORD}\n"
            "The deploy goes on meanwhile, and waits for the certificate at the end."
        ),
    )


def create_armor_policy() -> Step:
    return Step(
        "create Cloud Armor policy",
        (
            "gcloud",
            "compute",
            "security-policies",
            "create",
            ARMOR_POLICY,
            "--type=CLOUD_ARMOR",
            "--description=chargecast: a throttle per client IP",
        ),
        f"the GCPBackendPolicy attaches {ARMOR_POLICY} to the load balancer's backend: abusive clients are "
        "stopped at Google's edge, before they cost a pod anything",
        skip_if=("gcloud", "compute", "security-policies", "describe", ARMOR_POLICY, "--format=value(name)"),
    )


def throttle_rule(o: GkeOptions) -> Step:
    t = o.armor
    action = "rate-based-ban" if t.ban_seconds else "throttle"
    flags = (
        f"--security-policy={ARMOR_POLICY}",
        "--src-ip-ranges=*",
        f"--action={action}",
        f"--rate-limit-threshold-count={t.rate}",
        f"--rate-limit-threshold-interval-sec={t.interval}",
        "--conform-action=allow",
        "--exceed-action=deny-429",
        "--enforce-on-key=IP",
        *((f"--ban-duration-sec={t.ban_seconds}",) if t.ban_seconds else ()),
    )
    rules = ("gcloud", "compute", "security-policies", "rules")
    ban = f", then refused everything for {t.ban_seconds} s" if t.ban_seconds else ""
    return Step(
        "set throttle rule",
        (*rules, "create", THROTTLE_PRIORITY, *flags),
        f"each client IP may send {t.rate} requests in any {t.interval} s; beyond that it gets 429 Too Many "
        f"Requests{ban}. An existing rule is updated to these numbers",
        skip_if=(*rules, "describe", THROTTLE_PRIORITY, f"--security-policy={ARMOR_POLICY}", "--format=value(action)"),
        if_exists=(*rules, "update", THROTTLE_PRIORITY, *flags),
        hint="a rate-based-ban rule cannot become a throttle again: delete it "
        f"(`gcloud compute security-policies rules delete {THROTTLE_PRIORITY} --security-policy={ARMOR_POLICY}`) "
        "and run the deploy again",
    )


def edge_steps(o: GkeOptions) -> list[Step]:
    """Address, certificate (and its records), policy: everything the Gateway refers to by name."""
    if not o.gateway or not o.domain:
        return []
    d = o.domain
    return [
        reserve_ip(),
        create_dns_authorization(d),
        create_certificate(d),
        check_certificate_domain(d),
        create_certificate_map(),
        create_certificate_map_entry(d),
        *read_dns_records(),
        show_dns_records(d),
        create_armor_policy(),
        throttle_rule(o),
    ]


def wait_for_gateway() -> Step:
    return Step(
        "wait for Gateway",
        ("kubectl", "wait", f"gateway/{APP}", "--for=condition=Programmed", "--timeout=15m"),
        "GKE builds the global load balancer (forwarding rule, proxies, URL map, backend) behind the Gateway; "
        "it is Programmed once Google's edge routes to it",
        hint=f"`kubectl describe gateway {APP}` lists the controller's events (a missing IP, certificate map or "
        "Cloud Armor policy is named there)",
    )


def wait_for_certificate(o: GkeOptions) -> Step:
    minutes = o.cert_timeout_minutes
    return Step(
        "wait for certificate",
        (*CM, "certificates", "describe", CERTIFICATE, "--format=json"),
        "HTTPS works once the certificate is ACTIVE; until then browsers get a TLS error. The wait says "
        "what Google reports, in plain words",
        hint=f"nothing is lost: add or fix the DNS records ({o.domain}. A ${{STATIC_IP}}; ${{DNS_AUTH_RECORD}}), "
        f"check them with `dig +short CNAME _acme-challenge.{o.domain}`, then run the same command again: it "
        "skips what exists and waits again (--cert-timeout MINUTES waits longer)",
        poll=Poll(minutes * 2, CERT_POLL_SECONDS, read=read_certificate, until="the certificate is ACTIVE"),
    )
