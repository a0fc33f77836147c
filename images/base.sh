#!/usr/bin/env bash
# The base image, made without a registry: a minimal Debian bookworm root filesystem (python3 3.11,
# python3-venv, ca-certificates) built by debootstrap from the Debian mirror apt is configured with
# here, imported as a local image. Cached: does nothing when the image exists (FORCE=1 rebuilds).
#   images/base.sh [IMAGE]        default localhost/roost-base:bookworm; needs root, debootstrap, podman
# A machine that can pull from a registry does not need it: make image-<model> BASE_IMAGE=python:3.11-slim
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-localhost/roost-base:bookworm}
podman=(podman --storage-driver vfs)

if [[ -z ${FORCE:-} ]] && "${podman[@]}" image exists "$image"; then
    echo "$image exists (FORCE=1 rebuilds it)"
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "base.sh: debootstrap and the image store need root (sudo make base-image)" >&2; exit 1; }
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "base.sh: $tool is not installed (apt-get install -y buildah podman runc debootstrap)" >&2; exit 1; }
done

# The mirror serving bookworm in apt's own configuration (deb822 .sources or one-line .list), unless MIRROR is set.
mirror=${MIRROR:-$(python3 - <<'PY'
import glob, re
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")) + ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, flags=re.M))
            if "deb" in fields.get("Types", "").split() and "bookworm" in fields.get("Suites", "").split():
                print(fields["URIs"].split()[0]); raise SystemExit
    else:
        for line in text.splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if m:
                print(m.group(1)); raise SystemExit
PY
)}
[[ -n $mirror ]] || { echo "base.sh: no bookworm mirror in /etc/apt/sources.list*; set MIRROR=http://..." >&2; exit 1; }

rootfs=build/base-rootfs
rm -rf "$rootfs" && mkdir -p "$rootfs"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >build/base-debootstrap.log 2>&1 \
    || { tail -20 build/base-debootstrap.log >&2; exit 1; }
# What an image never reads: package caches and lists, documentation, man pages, translations.
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
tar --numeric-owner -C "$rootfs" -c . | "${podman[@]}" import --quiet \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase bookworm $mirror" - "$image" >/dev/null
"${podman[@]}" image inspect --format '{{.Id}}' "$image" >/dev/null
echo "$image: $("${podman[@]}" run --rm --runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 --network none "$image" python3 --version)"
