#!/usr/bin/env bash
# Check an aarch64 artefact directory on an emulated arm64 CPU (x86_64 Debian/Ubuntu host, run as root).
#
#   bash tools/arm64_check.sh ARTEFACT_DIR     # ARTEFACT_DIR: --output-dir of `bert_ptq.py --device aarch64`
#
# Builds (once) an arm64 Debian root run through qemu-user-static + binfmt_misc, installs requirements-runtime.txt
# there from aarch64 wheels, runs `predict.py --check` on both engines inside it and writes
# ARTEFACT_DIR/arm64_report.json. Exit 0 only when every engine ran int8 kernels and agreed with the host's
# fake-quant predictions on >= 99% of the stored sentences; 1 when the check failed; 2 when it cannot run here.
# Needs root: apt-get, binfmt_misc, mounts and chroot. The first run takes ~15 min (the arm64 root is installed
# under emulation); later runs reuse it.
# Knobs: PTQKIT_ARM64_ROOT (cache dir, default /var/cache/ptqkit-arm64), QEMU_CPU (default max,sme=off: SVE and
# i8mm without SME, whose kernels OpenVINO picks and qemu gets wrong), PTQKIT_ARM64_MIRROR (Debian mirror),
# PYTHON (host Python with pip, default python3), PTQKIT_ARM64_ENGINES (default openvino,onnxruntime).
set -euo pipefail

die() { echo "arm64_check: $*" >&2; exit 2; }
[ $# -eq 1 ] || die "usage: bash tools/arm64_check.sh ARTEFACT_DIR (the --output-dir of bert_ptq.py --device aarch64)"
ART=$(realpath -e "$1" 2>/dev/null) || die "artefact dir $1 does not exist"
[ -f "$ART/runtime.json" ] && [ -f "$ART/host_check.json" ] \
  || die "$ART lacks runtime.json or host_check.json: run bert_ptq.py --device aarch64 --output-dir $1 first"
grep -q '"aarch64"' "$ART/report.json" 2>/dev/null || echo "arm64_check: warning: $ART/report.json is not from --device aarch64" >&2

REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE=${PTQKIT_ARM64_ROOT:-/var/cache/ptqkit-arm64}
ROOT=$BASE/rootfs
CPU=${QEMU_CPU:-max,sme=off}
MIRROR=${PTQKIT_ARM64_MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-python3}
SUITE=trixie  # Debian 13: CPython 3.13, which the engines' aarch64 wheels cover
VENV=/opt/ptqkit-venv
ENGINES=${PTQKIT_ARM64_ENGINES:-openvino,onnxruntime}

[ "$(id -u)" -eq 0 ] || die "needs root (apt-get, binfmt_misc, mounts, chroot); rerun as root"
[ "$(uname -m)" = x86_64 ] || die "emulates arm64 on an x86_64 host; on an ARM machine run: python predict.py $1 --check --engine openvino,onnxruntime"
command -v apt-get >/dev/null || die "needs a Debian or Ubuntu host (apt-get) for qemu-user-static and debootstrap"
"$PY" -m pip --version >/dev/null 2>&1 || die "needs pip on the host ($PY -m pip); activate the project's venv or set PYTHON"
unshare --mount true 2>/dev/null || die "cannot create a mount namespace (needs CAP_SYS_ADMIN; in a container run it privileged)"

mkdir -p "$BASE/logs"
T0=$(date +%s)
step() { echo "[arm64_check +$(( $(date +%s) - T0 ))s] $*" >&2; }
logged() {  # run a noisy command with its output in a log; on failure show the log's end
  local log=$BASE/logs/$1.log; shift
  "$@" >"$log" 2>&1 || { tail -n 15 "$log" >&2; die "'$*' failed (full log: $log)"; }
}

step "host packages: qemu-user-static, binfmt-support, debootstrap"
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null || ! command -v update-binfmts >/dev/null; then
  logged apt-update apt-get update
  logged apt-install env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    qemu-user-static binfmt-support debootstrap
fi

step "binfmt_misc: aarch64 binaries run through qemu"
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
  || die "cannot mount binfmt_misc (a container needs it from the host)"
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || logged binfmt update-binfmts --enable qemu-aarch64
# F: the interpreter is opened at registration, so it also works inside the chroot without a copy of qemu there.
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
  || die "binfmt qemu-aarch64 is registered without the F flag; reinstall qemu-user-static"

if [ ! -e "$ROOT/.ptqkit-ok" ]; then
  step "arm64 Debian $SUITE root (debootstrap, second stage emulated: ~10 min)"
  rm -rf "$ROOT.tmp"  # leftover of an interrupted build (its mounts lived in a namespace that is gone)
  logged debootstrap nice -n 10 debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv \
    "$SUITE" "$ROOT.tmp" "$MIRROR"
  rm -rf "$ROOT" && mv "$ROOT.tmp" "$ROOT" && touch "$ROOT/.ptqkit-ok"
fi

guest() {  # run a command in the arm64 root, in a private mount namespace (nothing stays mounted afterwards)
  unshare --mount --propagation private /bin/bash -c '
    set -e; R=$1; shift
    mount -t proc proc "$R/proc"
    mount -t sysfs sysfs "$R/sys"  # OpenVINO (hwloc/TBB) crashes without a CPU topology in /sys
    mount -t tmpfs tmpfs "$R/tmp"  # ONNX Runtime'"'"'s optimized graphs land in /tmp: gone with the namespace
    if [ -s "$BASE/cpuinfo.$TAG" ]; then mount --bind "$BASE/cpuinfo.$TAG" "$R/proc/cpuinfo"; fi
    for spec in $BINDS; do  # src:dst[:ro]
      IFS=: read -r src dst mode <<<"$spec"; mkdir -p "$R$dst"; mount --bind "$src" "$R$dst"
      if [ "$mode" = ro ]; then mount -o remount,bind,ro "$R$dst"; fi
    done
    exec nice -n 10 env -i PATH=$VENV/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU="$CPU" \
      OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1 "$CHROOT" "$R" "$@"' guest "$ROOT" "$@"
}
export BASE CPU VENV CHROOT=$(command -v chroot)
export TAG=${CPU//[,=]/_} BINDS="$REPO:/opt/ptqkit:ro"

step "arm64 /proc/cpuinfo for QEMU_CPU=$CPU"
if [ ! -s "$BASE/cpuinfo.$TAG" ]; then
  guest python3 /opt/ptqkit/tools/arm64_cpuinfo.py "$(nproc)" >"$BASE/cpuinfo.$TAG.tmp" || die "could not read the emulated CPU's id"
  mv "$BASE/cpuinfo.$TAG.tmp" "$BASE/cpuinfo.$TAG"
fi

PYVER=$(basename "$(readlink -f "$ROOT/usr/bin/python3")" | sed 's/^python//')  # e.g. 3.13
STAMP="$PYVER $(sha256sum "$REPO/requirements-runtime.txt" | cut -d' ' -f1)"
SITE=$ROOT$VENV/lib/python$PYVER/site-packages
if [ "$(cat "$ROOT$VENV/.ptqkit-runtime" 2>/dev/null)" != "$STAMP" ]; then
  step "runtime requirements: aarch64 wheels for CPython $PYVER (downloaded and installed from the host)"
  [ -x "$ROOT$VENV/bin/python" ] || guest python3 -m venv --without-pip "$VENV"
  platforms=(--platform manylinux2014_aarch64)
  for v in $(seq 17 41); do platforms+=(--platform "manylinux_2_${v}_aarch64"); done
  target=(--only-binary=:all: --implementation cp --python-version "$PYVER" --abi "cp${PYVER/./}" "${platforms[@]}")
  logged pip-download nice -n 10 "$PY" -m pip download "${target[@]}" -d "$BASE/wheels" -r "$REPO/requirements-runtime.txt"
  # Host pip installing for another interpreter: it needs --target, and --ignore-requires-python to accept cp313.
  rm -rf "$SITE"
  logged pip-install nice -n 10 "$PY" -m pip install "${target[@]}" --no-index --find-links "$BASE/wheels" \
    --ignore-requires-python --no-compile --target "$SITE" -r "$REPO/requirements-runtime.txt"
  echo "$STAMP" >"$ROOT$VENV/.ptqkit-runtime"
fi

step "predict.py --check on $ENGINES inside the guest (QEMU_CPU=$CPU)"
OUT=$(mktemp -d "$BASE/out.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
export BINDS="$BINDS $ART:/mnt/artefacts:ro $OUT:/mnt/out"
set +e
guest python /opt/ptqkit/predict.py /mnt/artefacts --check --engine "$ENGINES" --threads 1 \
  --report /mnt/out/arm64_report.json >"$BASE/logs/check.log" 2>&1
rc=$?
set -e
[ -s "$OUT/arm64_report.json" ] || { tail -n 15 "$BASE/logs/check.log" >&2; die "the check wrote no report (exit $rc; log: $BASE/logs/check.log)"; }
"$PY" - "$OUT/arm64_report.json" "$ART/arm64_report.json" "$(qemu-aarch64-static --version | head -n1)" <<'PY'
import json, os, platform, sys
src, dst, qemu = sys.argv[1:4]
rep = json.load(open(src))
rep["cpu"]["emulation"] = {"qemu": qemu, "qemu_cpu": rep["cpu"].get("qemu_cpu"), "host_machine": platform.machine()}
tmp = dst + ".tmp"
with open(tmp, "w") as f:
    json.dump(rep, f, indent=2)
    f.write("\n")
os.replace(tmp, dst)
cpu = rep["cpu"]
print(f"emulated CPU: {cpu.get('arch')} (QEMU_CPU={cpu.get('qemu_cpu')}, MIDR implementer {cpu.get('implementer')} "
      f"part {cpu.get('part')}; int8 features: {' '.join(cpu.get('flags', []))}), {qemu}")
print(f"| engine | int8 kernels in its runtime graph | agreement with host fake-quant ({rep['sentences']} sentences) | passed |")
print("|---|---|---|---|")
for name, e in rep["engines"].items():
    if "error" in e:
        print(f"| {name} | failed: {e['error']} | | no |")
    else:
        kernels = ", ".join(f"{k} {v}" for k, v in e["kernel_details"].items())
        print(f"| {name} | {e['int8_kernels']} ({kernels}) | {e['agreement_with_host']:.3f} | {'yes' if e['passed'] else 'no'} |")
print("passed" if rep["passed"] else "FAILED", f"(every engine: int8 kernels > 0 and agreement >= {rep['min_agreement']})")
PY
step "wrote $ART/arm64_report.json"
[ "$rc" -eq 0 ] || exit 1
