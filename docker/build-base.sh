#!/usr/bin/env bash
# Build a Debian bookworm base image equivalent to python:3.11-slim-bookworm, from Debian's packages alone,
# for machines that reach a Debian mirror but no container registry. Usage: docker/build-base.sh TAG
#
# Equivalent where the Dockerfile relies on it: Python 3.11 (bookworm's python3) with its headers (as the
# official image has them), `python`/`pip` on PATH (a venv at /opt/venv, since Debian's python3 is
# externally managed), ca-certificates, C.UTF-8, apt and useradd. The machine's own local CAs (/usr/local/share/ca-certificates) are trusted too, so that pip in
# the build reaches the package index through the same TLS path the host does; such a base is for local
# builds and tests, never for pushing.
set -euo pipefail
tag="${1:?usage: docker/build-base.sh TAG}"
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

# The mirror this machine's apt uses (deb822 or one-line sources); debootstrap's default otherwise.
mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
[ -n "$mirror" ] || mirror="$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"

rootfs="$(mktemp -d /tmp/storeflow-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates bookworm "$rootfs" $mirror >&2

if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  chroot "$rootfs" update-ca-certificates >/dev/null
fi
chroot "$rootfs" python3 -m venv /opt/venv
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

# Debian's pip uses certifi's bundle, not the system one: point it (and requests) at the system bundle.
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  --message "storeflow base: debootstrap --variant=minbase bookworm, python3 venv at /opt/venv" \
  - "$tag" >&2
echo "$tag"
