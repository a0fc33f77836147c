#!/usr/bin/env bash
# Builds one Roost image with buildah (vfs storage, chroot isolation: no daemon, no registry).
#   images/build.sh serve MODEL    serving image, CPU (onnxruntime)          -> $IMAGE_REPO/roost-MODEL:$IMAGE_TAG
#   images/build.sh gpu MODEL      serving image, onnxruntime-gpu + CUDA wheels -> ...:$IMAGE_TAG-gpu
#   images/build.sh fastai MODEL   serving image for ROOST_RUNTIME=fastai (+ torch, fastai, learner.pkl) -> ...:$IMAGE_TAG-fastai
#   images/build.sh train          training image (torch + fastai)           -> $IMAGE_REPO/roost-train:$IMAGE_TAG
# Environment (the Makefile passes its variables): BASE_IMAGE, IMAGE_REPO, IMAGE_TAG, IMAGE (the whole
# name, overrides the three), ARTIFACTS, BUNDLE (a bundle folder to bake in; "" = the newest sealed
# version under $ARTIFACTS/MODEL, if any; "none" = no bundle: the image serves a mounted volume).
# Everything it writes lies in the repository (build/, ignored) and in the container storage.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: images/build.sh serve|gpu|fastai MODEL | train}
model=${2:-}
BASE_IMAGE=${BASE_IMAGE:-localhost/roost-base:bookworm}
IMAGE_REPO=${IMAGE_REPO:-ghcr.io/roost-ml}
IMAGE_TAG=${IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/roost/Chart.yaml)}
ARTIFACTS=${ARTIFACTS:-artifacts}
BUNDLE=${BUNDLE:-}
buildah=(buildah --storage-driver vfs)

command -v buildah >/dev/null || { echo "build.sh: buildah is not installed (apt-get install -y buildah podman runc debootstrap)" >&2; exit 1; }
if [[ $BASE_IMAGE == localhost/* ]] && ! "${buildah[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "build.sh: base image $BASE_IMAGE is missing: run make base-image (or set BASE_IMAGE=python:3.11-slim-bookworm)" >&2
    exit 1
fi

ctx=build/image-context/${kind}${model:+-$model}
rm -rf "$ctx" && mkdir -p "$ctx"
copy_tree() {  # copy_tree SRC DEST [tar excludes...]: SRC's files, without byte code
    local src=$1 dest=$2; shift 2
    mkdir -p "$dest"
    tar -C "$src" --exclude=__pycache__ --exclude='*.pyc' "$@" -c . | tar -C "$dest" -x
}

if [[ $kind == train ]]; then
    image=${IMAGE:-$IMAGE_REPO/roost-train:$IMAGE_TAG}
    cp pyproject.toml "$ctx/"
    python3 -m services.registry requirements --extra train > "$ctx/requirements.txt"
    copy_tree services "$ctx/services" --exclude='Dockerfile.*'
    copy_tree training "$ctx/training"
    args=(-f services/Dockerfile.train)
    echo "building $image (training: torch + fastai, large)"
elif [[ $kind == serve || $kind == gpu || $kind == fastai ]]; then
    [[ -n $model ]] || { echo "usage: images/build.sh $kind MODEL" >&2; exit 2; }
    service=$(python3 -m services.registry service "$model")
    suffix=; [[ $kind == serve ]] || suffix=-$kind
    image=${IMAGE:-$IMAGE_REPO/roost-$model:$IMAGE_TAG$suffix}
    python3 -m services.registry requirements --extra "$kind" > "$ctx/requirements.txt"
    copy_tree services "$ctx/services" --exclude='Dockerfile.*'
    mkdir -p "$ctx/artifacts"
    bundle=$BUNDLE
    if [[ -z $bundle ]]; then  # the newest sealed version, as the server picks it
        manifests=("$ARTIFACTS/$model"/*/manifest.json)  # versions sort by time, as the glob does
        [[ -f ${manifests[-1]} ]] && bundle=$(dirname "${manifests[-1]}")
        [[ -n $bundle ]] || { bundle=none; echo "no bundle under $ARTIFACTS/$model: building an image that serves a mounted volume"; }
    fi
    version=none
    if [[ $bundle != none ]]; then
        [[ -f $bundle/manifest.json ]] || { echo "build.sh: $bundle is not a bundle (no manifest.json)" >&2; exit 1; }
        version=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' "$bundle/manifest.json")
        # learner.pkl is the fastai runtime's; the ONNX server never reads it (its sha256 is still in the manifest).
        leave_out=(--exclude=learner.pkl); [[ $kind == fastai ]] && leave_out=()
        copy_tree "$bundle" "$ctx/artifacts/$model/$version" "${leave_out[@]}"
        echo "baking $bundle ($(du -sh "$ctx/artifacts" | cut -f1)${leave_out:+, without learner.pkl}) into /opt/roost/artifacts/$model/$version"
    fi
    args=(-f services/Dockerfile.serve --build-arg "MODEL=$model" --build-arg "SERVICE=$service"
          --build-arg "EXTRA=$kind" --build-arg "BUNDLE_VERSION=$version")
    echo "building $image from $BASE_IMAGE"
else
    echo "usage: images/build.sh serve|gpu|fastai MODEL | train" >&2; exit 2
fi

if [[ $kind == train || $kind == fastai ]]; then
    # torch (train, fastai): also from the local package folders this host's pip reads (torch 2.14.1 may lie
    # only there), mounted read-only for the build.
    local_dirs=$(python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.\(extra-index-url\|find-links\)='\(.*\)'$/\1 \2/p")
    extra_index=; find_links=; declare -A mounted=()
    while read -r key values; do
        for v in $values; do
            dir=${v#file://}; dir=${dir%/}
            [[ -d $dir ]] || continue
            mount=$dir; [[ $(basename "$dir") == simple ]] && mount=$(dirname "$dir")  # its pages link to ../files/
            if [[ -z ${mounted[$mount]:-} ]]; then mounted[$mount]=1; args+=(-v "$mount:$mount:ro"); fi
            if [[ $key == extra-index-url ]]; then extra_index+="$v "; else find_links+="$v "; fi
        done
    done <<<"$local_dirs"
    [[ -z $extra_index ]] || args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra_index% }")
    [[ -z $find_links ]] || args+=(--build-arg "PIP_FIND_LINKS=${find_links% }")
fi

# What the image is made of, as one digest (see CONTEXT_DIGEST in the Containerfile).
base_id=$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$BASE_IMAGE" 2>/dev/null || echo "$BASE_IMAGE")
digest=$( (sha256sum <"${args[1]}"; echo "$base_id"; cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) \
          | sha256sum | cut -c1-16)
args+=(--build-arg "CONTEXT_DIGEST=$digest")

# pip's CA bundle on this host (PIP_CERT or pip's `cert` setting), handed to the build as a secret.
cert=${PIP_CERT:-$(python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.cert='\(.*\)'$/\1/p" | tail -1)}
args+=(--secret "id=pip-cert,src=${cert:-/dev/null}")
[[ -z ${PIP_INDEX_URL:-} ]] || args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")

old_id=$(podman --storage-driver vfs image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
start=$(date +%s)
log=build/image-$kind${model:+-$model}.log
# --layers: the venv stage is cached and shared by every model's image. --isolation chroot: no
# namespaces needed; the build reaches PyPI through the host's network.
if ! "${buildah[@]}" bud --layers --force-rm --isolation chroot --format oci \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" "${args[@]}" -t "$image" "$ctx" >"$log" 2>&1; then
    tail -30 "$log" >&2
    echo "build.sh: building $image failed (whole log: $log)" >&2
    exit 1
fi
size=$(podman --storage-driver vfs image inspect --format '{{.Size}}' "$image")
echo "built $image in $(( $(date +%s) - start )) s: $(( size / 1000000 )) MB uncompressed (log: $log)"
new_id=$(podman --storage-driver vfs image inspect --format '{{.Id}}' "$image")
if [[ -n $old_id && $old_id != "$new_id" ]]; then  # the image this name pointed at (vfs stores whole copies)
    podman --storage-driver vfs rmi "$old_id" >/dev/null 2>&1 || true
fi
