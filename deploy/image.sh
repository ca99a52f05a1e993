#!/usr/bin/env bash
# Build the chargecast image with its SBOM beside it, and push it signed.
#
#   deploy/image.sh build [--tag REF] [--out DIR]
#       Builds the Dockerfile (podman, or docker when podman is absent; ENGINE=... to choose) and
#       copies the SBOM the build wrote into the image (/app/sbom.cdx.json) to DIR/sbom.cdx.json
#       (default dist/), so the file that ships and the file you archive are the same bytes.
#       BASE_IMAGE=... passes a base image; CA_BUNDLE=... (default: the system bundle, when
#       present) is handed to pip in the build as the `ca` secret.
#   deploy/image.sh push SOURCE DEST --sign-by FINGERPRINT [--passphrase-file F] [--digestfile F]
#       Pushes SOURCE (a local image) to DEST (registry/repo:tag) with podman, signed with the GPG
#       key FINGERPRINT ("simple signing"); the signature goes to the lookaside store that
#       registries.d configures for DEST. Prints DEST@sha256:... last. Signing is not optional.
#
# docs/supply-chain.md says why GPG simple signing and not sigstore here, and how pulls enforce it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

die() {
  echo "deploy/image.sh: $*" >&2
  exit 2
}

engine() {
  if [ -n "${ENGINE:-}" ]; then
    command -v "$ENGINE" >/dev/null || die "ENGINE=$ENGINE: no such command"
    echo "$ENGINE"
  elif command -v podman >/dev/null; then
    echo podman
  elif command -v docker >/dev/null; then
    echo docker
  else
    die "neither podman nor docker is installed"
  fi
}

build() {
  local tag=localhost/chargecast:dev out=$ROOT/dist
  while [ $# -gt 0 ]; do
    case $1 in
      --tag) [ $# -ge 2 ] || die "--tag needs an image reference"; tag=$2; shift 2 ;;
      --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
      *) die "build: unknown argument '$1' (use --tag REF, --out DIR)" ;;
    esac
  done
  local eng args=()
  eng=$(engine)
  [ "$eng" = podman ] && args+=(--format docker) # HEALTHCHECK needs the docker format
  [ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  local ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
  [ -f "$ca" ] && args+=(--secret "id=ca,src=$ca")
  local revision=${REVISION:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
  "$eng" build "${args[@]}" --build-arg "REVISION=$revision" -t "$tag" "$ROOT"
  mkdir -p "$out"
  local ctr
  ctr=$("$eng" create "$tag")
  "$eng" cp "$ctr:/app/sbom.cdx.json" "$out/sbom.cdx.json.part" >/dev/null || {
    "$eng" rm "$ctr" >/dev/null
    die "the image $tag has no /app/sbom.cdx.json"
  }
  "$eng" rm "$ctr" >/dev/null
  mv "$out/sbom.cdx.json.part" "$out/sbom.cdx.json"
  echo "image $tag; SBOM $out/sbom.cdx.json"
}

push() {
  [ $# -ge 2 ] || die "push needs SOURCE and DEST (deploy/image.sh push SOURCE DEST --sign-by FINGERPRINT)"
  local src=$1 dest=$2 key="" pass="" digestfile=""
  shift 2
  while [ $# -gt 0 ]; do
    case $1 in
      --sign-by) [ $# -ge 2 ] || die "--sign-by needs a GPG key fingerprint"; key=$2; shift 2 ;;
      --passphrase-file) [ $# -ge 2 ] || die "--passphrase-file needs a file"; pass=$2; shift 2 ;;
      --digestfile) [ $# -ge 2 ] || die "--digestfile needs a file"; digestfile=$2; shift 2 ;;
      *) die "push: unknown argument '$1' (use --sign-by, --passphrase-file, --digestfile)" ;;
    esac
  done
  [ -n "$key" ] || die "--sign-by is required: images are pushed signed (a GPG key fingerprint)"
  case $dest in */*) ;; *) die "DEST '$dest' must name a registry and repository, e.g. 127.0.0.1:5000/chargecast:1" ;; esac
  command -v podman >/dev/null || die "push signs with podman (docker cannot write simple signatures); install podman"
  # A local copy pulled from a registry carries that registry's signatures (for another
  # reference); they are dropped and the image signed afresh for DEST.
  local args=(--remove-signatures --sign-by "$key")
  [ -n "$pass" ] && args+=(--sign-passphrase-file "$pass")
  local tmp digest repo=$dest
  tmp=$(mktemp)
  if ! podman push --quiet "${args[@]}" --digestfile "$tmp" "$src" "docker://$dest"; then
    rm -f "$tmp"
    die "podman push of $src to $dest failed (see above)"
  fi
  digest=$(cat "$tmp")
  rm -f "$tmp"
  if [ -n "$digestfile" ]; then printf '%s\n' "$digest" >"$digestfile"; fi
  case ${dest##*/} in *:*) repo=${dest%:*} ;; esac # drop the tag, keep a registry's :port
  echo "$repo@$digest"
}

case ${1:-} in
  build) shift; build "$@" ;;
  push) shift; push "$@" ;;
  *) die "usage: deploy/image.sh build [--tag REF] [--out DIR] | push SOURCE DEST --sign-by FINGERPRINT" ;;
esac
