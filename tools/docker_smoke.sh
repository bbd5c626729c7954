#!/bin/sh
# Smoke test of a built image (make docker-smoke; docs/docker.md): `vrnn --help`, then
# sample-data → index → extract → train → evaluate → predict in containers with no network,
# run as the calling user on a mounted temporary folder. Checks that every output belongs to
# the calling user and that no container wrote anything outside the mount (docker diff).
set -eu
image=${1:?usage: tools/docker_smoke.sh IMAGE}
uid=$(id -u)
gid=$(id -g)
if [ "$uid" = 0 ]; then
    echo "error: run the smoke test as a non-root user in the docker group: as root the ownership check proves nothing" >&2
    exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/vrnn-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
n=0

# vrnn ARGS… in a fresh container; fails on a non-zero exit or on any change outside /work
in_container() {
    n=$((n + 1))
    name="vrnn-smoke-$$-$n"
    echo "== vrnn $*"
    status=0
    docker run --name "$name" --network none --user "$uid:$gid" -v "$work:/work" \
        -e TF_NUM_INTRAOP_THREADS=1 -e TF_NUM_INTEROP_THREADS=1 "$image" "$@" || status=$?
    changed=$(docker diff "$name")
    docker rm "$name" >/dev/null
    if [ "$status" != 0 ]; then
        echo "FAIL: vrnn $* exited $status" >&2
        exit 1
    fi
    if [ -n "$changed" ]; then
        printf 'FAIL: vrnn %s wrote outside the mount:\n%s\n' "$*" "$changed" >&2
        exit 1
    fi
}

in_container --help >/dev/null
in_container sample-data videos --classes 4 --per-class 9 --seed 0  # 9: every split gets each class
in_container index videos -o manifest.csv
in_container extract videos -o features/features.h5 --weights random --input-size 96 \
    --dtype float16
in_container train manifest.csv features/features.h5 -o models --epochs 5 --batch-size 4 \
    --seq-len 8 --seed 0
in_container evaluate models manifest.csv features/features.h5 --split test -o metrics
predict_on=$(cd "$work" && find videos -type f -name '*.mp4' | sort | head -n 1)
in_container predict models "$predict_on" --top-k 2

for out in manifest.csv features/features.h5 models metrics/eval.json; do
    [ -e "$work/$out" ] || { echo "FAIL: no $out" >&2; exit 1; }
done
foreign=$(find "$work" \( ! -user "$uid" -o ! -group "$gid" \) -print)
if [ -n "$foreign" ]; then
    printf 'FAIL: outputs not owned by %s:%s:\n%s\n' "$uid" "$gid" "$foreign" >&2
    exit 1
fi
echo "docker smoke OK: $image, $n containers as $uid:$gid, $(find "$work" -type f | wc -l) files, all owned by the caller, nothing written outside the mount"
