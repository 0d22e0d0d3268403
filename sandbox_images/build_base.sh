#!/usr/bin/env bash
# Build the offline base image (Debian bookworm minbase + python3 + CA bundle)
# with debootstrap and `docker import`, for machines that cannot pull images.
# Usage: build_base.sh IMAGE_NAME [SUITE]
set -euo pipefail
name=${1:?usage: build_base.sh IMAGE_NAME [SUITE]}
suite=${2:-bookworm}
command -v debootstrap >/dev/null || { echo "build_base: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build_base: debootstrap needs root" >&2; exit 1; }
dir=$(mktemp -d /tmp/sandgate-base.XXXXXX)
trap 'rm -rf "$dir"' EXIT
debootstrap --variant=minbase --include=python3,ca-certificates "$suite" "$dir" >/dev/null
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
tar -C "$dir" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  - "$name" >/dev/null
echo "build_base: imported $name"
