#!/usr/bin/env bash
# The kernel test matrix: run a command (by default the kernel-dependent privileged tests) inside a QEMU guest
# booted on each of several Debian kernels, one VM at a time, and report PASS/FAIL per kernel.
#
#   scripts/vm-matrix.sh                     # the end-to-end and kernel-dependent tests (tag vm-suite: kernel)
#   VM_SUITE=all scripts/vm-matrix.sh        # every privileged test per kernel
#   scripts/vm-matrix.sh -- uname -a         # any command, run in the repository root in the guest
#   VM_KERNELS=linux-image-6.1.0-47-amd64 scripts/vm-matrix.sh -- \
#     node --import tsx --test test/privileged/kernel/trace.test.ts
#
# Each kernel is a Debian package fetched with `apt-get download` into a cache (reused next time),
# unpacked with `dpkg-deb -x`, and indexed with `depmod -b` so that modprobe works in the guest. The guest
# boots that kernel with a busybox initramfs which loads the 9p modules (their dependencies resolved from
# modules.dep), mounts the host's root read-only over virtio-9p with a tmpfs overlay on top (so the guest
# may write anywhere, and every write is thrown away with the guest), and switches into it. There the
# stage-2 init mounts the kernel filesystems the tests need, binds the kernel's modules to
# /lib/modules/<release>, runs the command from the repository's directory and writes its exit code and
# output to a second, writable 9p share before powering off. Nothing is built in the guest: build on the
# host first (scripts/setup.sh --test, or `npm run build` and `npm run build:helpers`).
#
# The guest sees the repository as it was when this script started: a copy of it (without node_modules,
# .cache and .git, which the guest reads from the live tree) is shared read-only and mounted, under a tmpfs
# overlay, over the repository's path. Editing or rebuilding on the host during a run changes nothing in
# the guest, so a run of many minutes never reads a half-written file.
#
# A guest whose kernel panics before the command ends is booted once more, loudly, and its verdict says
# so: a panic is the emulator's or that kernel's failure, not a test result. Any other failure counts.
#
# The guest sees TCPTRACER_VM=1 and TCPTRACER_VM_KERNEL=<release>, so tests can adapt. Under TCG the
# guest is slow: a test's own timeouts may need to allow for that.
#
# Environment:
#   VM_SUITE      kernel (default): the privileged tests tagged `// vm-suite: kernel` (trace, exporter, accept
#                 hooks, full rate, capabilities, restart); hooks: those tagged `// vm-suite: ... hooks` (accept
#                 hooks, full rate, capabilities, restart); all: every privileged test, test/privileged/*/
#                 (kernel, exporter, http, deploy, in that order, as npm run test:privileged runs them)
#   VM_KERNELS    space-separated kernel packages (default: Debian 12's 6.1 and 6.12 backport kernels)
#   VM_CACHE_DIR  where kernels are kept (default /var/cache/tcptracer-exporter/kernels)
#   VM_TIMEOUT    seconds one guest may run before it counts as a failure (default 1800)
#   VM_MEM        guest memory in MiB (default 2048); VM_SMP guest CPUs (default 2)
#   VM_PASS_ENV   more variable names to pass into the guest, besides CI, NO_COLOR, FORCE_COLOR,
#                 NODE_OPTIONS and TCPTRACER_*
#   VM_KEEP=1     keep the run's directory (console log, per-kernel output) even when everything passed
#   VM_SNAPSHOT=0 let the guest read the live repository instead of a copy taken at the start
#   VM_9P_CACHE   the 9p cache mode for the host root (default none; loose is ~15% faster, but a file that
#                 changes on the host while the guest runs may then be read torn)
#
# Needs root, qemu-system-x86 and busybox-static (scripts/setup.sh --test installs them). Without them it skips
# loudly and exits 0, except under CI=true, where it fails. Exits non-zero when any kernel fails or a VM
# cannot be started. KVM is not used: a KVM guest hangs in early boot on these machines, so it is TCG.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd -P)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() {
  printf 'vm-matrix: %s\n' "$*" >&2
  exit 1
}

# Missing privileges or tools: a failure under CI=true, a loud skip otherwise.
skip_or_fail() {
  if [ "${CI:-}" = "true" ]; then die "$*, and CI=true forbids skipping the VM kernel matrix"; fi
  printf '\n*** SKIPPING THE VM KERNEL MATRIX: %s ***\n\n' "$*" >&2
  exit 0
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

# --- arguments ---------------------------------------------------------------------------------------

cmd=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; cmd=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (a command to run goes after --; see --help)" ;;
  esac
done
default_cmd=false
if [ ${#cmd[@]} -eq 0 ]; then
  default_cmd=true
  # expanded here, in the repository root, which is where the guest runs it. The tests live in folders by
  # layer; a suite is a tag, a line `// vm-suite: NAME...` in a test's header, since the suites cut across
  # the layers. VM_SUITE=kernel (the default, and the CI gate): the end-to-end tests of the tracer and the
  # exporter (kernel/trace, exporter/exporter) and the kernel-dependent ones (tagged hooks too: accept
  # hooks, full rate, capabilities, restart); hooks: only those; all: every privileged test (docs/kernels.md
  # says what the rest need).
  all_tests=(test/privileged/kernel/*.test.ts test/privileged/exporter/*.test.ts
    test/privileged/http/*.test.ts test/privileged/deploy/*.test.ts)
  case "${VM_SUITE:-kernel}" in
    kernel | hooks) mapfile -t suite < <(grep -l -E "^// vm-suite:.* ${VM_SUITE:-kernel}( |\$)" "${all_tests[@]}") ;;
    all) suite=("${all_tests[@]}") ;;
    *) die "VM_SUITE must be kernel, hooks or all, got ${VM_SUITE}" ;;
  esac
  [ ${#suite[@]} -gt 0 ] || die "no privileged test is tagged vm-suite: ${VM_SUITE:-kernel}"
  cmd=(node --import tsx --test --test-reporter=spec --test-concurrency=1 "${suite[@]}")
fi

read -r -a kernels <<<"${VM_KERNELS:-linux-image-6.1.0-47-amd64 linux-image-6.12.100+deb12-amd64}"
[ ${#kernels[@]} -gt 0 ] || die "VM_KERNELS is empty"
cache=${VM_CACHE_DIR:-/var/cache/tcptracer-exporter/kernels}
timeout_s=${VM_TIMEOUT:-1800}
mem=${VM_MEM:-2048}
smp=${VM_SMP:-2}
[[ "$timeout_s" =~ ^[0-9]+$ && "$mem" =~ ^[0-9]+$ && "$smp" =~ ^[0-9]+$ ]] ||
  die "VM_TIMEOUT, VM_MEM and VM_SMP must be whole numbers"

# --- prerequisites -----------------------------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || skip_or_fail "the VM kernel matrix needs root (apt-get download, depmod, a root-owned 9p share)"
for tool in qemu-system-x86_64 apt-get dpkg-deb depmod cpio gzip timeout; do
  command -v "$tool" >/dev/null || skip_or_fail "$tool is missing (scripts/setup.sh --test installs qemu-system-x86, busybox-static, cpio and kmod)"
done
busybox=/bin/busybox
# the initramfs needs a statically linked busybox (busybox-static's); a dynamic one would not run there
if ! [ -x "$busybox" ] || ! { LC_ALL=C ldd "$busybox" 2>&1 || true; } | grep -q 'not a dynamic executable'; then
  skip_or_fail "a static $busybox is missing (scripts/setup.sh --test installs busybox-static)"
fi

# The build the tests use must exist on the host: the guest only reads it.
missing_build=()
for f in dist/src/cli.js addon/build/Release/tcptracer.node .output/tcptracer.bpf.o test/helpers/bin/tcpload node_modules/.bin/tsx; do
  [ -e "$f" ] || missing_build+=("$f")
done
if [ ${#missing_build[@]} -gt 0 ]; then
  if $default_cmd; then die "not built: ${missing_build[*]} missing (run scripts/setup.sh --test, or npm run build and npm run build:helpers, first)"; fi
  say "warning: not built: ${missing_build[*]} missing"
fi

# The guest's PATH: the usual one, with the directory of the host's node first
node_dir=$(dirname "$(command -v node 2>/dev/null || echo /usr/bin/node)")
guest_path="$node_dir:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Variables passed into the guest: CI and a few that change how the tests print or run
pass_env=()
for name in CI NO_COLOR FORCE_COLOR NODE_OPTIONS ${VM_PASS_ENV:-} $(compgen -e | grep '^TCPTRACER_' || true); do
  case "$name" in TCPTRACER_VM | TCPTRACER_VM_KERNEL) continue ;; esac
  [ -n "${!name+set}" ] && pass_env+=("$name=${!name}")
done

# --- kernels -----------------------------------------------------------------------------------------

mkdir -p "$cache"
apt_updated=false

# fetch_kernel PKG: unpack the package into $cache/PKG once, run depmod, and set kver, kmods and vmlinuz;
# fetched=false when apt cannot download it. Serialised with a lock, so concurrent runs share the cache.
fetch_kernel() {
  local pkg=$1 dir=$cache/$1 tmp deb mdir v
  fetched=true
  exec 9>"$cache/.lock"
  flock 9
  if [ ! -e "$dir/.complete" ]; then
    say "fetching $pkg into $dir"
    tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
    # the cache is root's, not _apt's: let apt download as root without its sandbox warning
    if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null); then
      if ! $apt_updated; then
        say "apt-get update (the package lists may be stale)"
        apt-get update -qq
        apt_updated=true
      fi
      if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null); then
        rm -rf "$tmp"
        exec 9>&-
        fetched=false
        return 0
      fi
    fi
    deb=$(find "$tmp" -maxdepth 1 -name '*.deb' -print -quit)
    mkdir "$tmp/root"
    dpkg-deb -x "$deb" "$tmp/root"
    rm -f "$deb"
    mdir=$(modules_base "$tmp/root")
    for v in "$mdir"/*; do
      [ -d "$v" ] || continue
      # depmod -b wants BASE/lib/modules/VERSION (BASE is ROOT/usr where the package uses /usr/lib)
      depmod -b "${mdir%/lib/modules}" "$(basename "$v")"
    done
    rm -rf "$dir"
    mv "$tmp/root" "$dir"
    rmdir "$tmp"
    touch "$dir/.complete"
  fi
  exec 9>&-
  mdir=$(modules_base "$dir")
  kver=$(find "$mdir" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -1)
  [ -n "$kver" ] || die "$pkg: no lib/modules/<version> in the package"
  kmods=$mdir/$kver
  vmlinuz=$dir/boot/vmlinuz-$kver
  [ -f "$vmlinuz" ] || die "$pkg: no $vmlinuz"
}

# modules_base ROOT: ROOT/lib/modules or ROOT/usr/lib/modules, whichever the package used
modules_base() {
  if [ -d "$1/lib/modules" ]; then echo "$1/lib/modules"; else echo "$1/usr/lib/modules"; fi
}

# resolve_modules MODDIR NAME...: the module files (relative to MODDIR) to insmod, dependencies first, for
# each NAME not built into the kernel. modules.dep lists a module's whole dependency closure with the
# ones to load first last, which is the order modprobe uses.
resolve_modules() {
  local moddir=$1
  shift
  awk -v want="$*" '
    function norm(p) { sub(/.*\//, "", p); sub(/\.ko(\.(xz|zst|gz))?$/, "", p); gsub(/-/, "_", p); return p }
    FILENAME ~ /modules\.builtin$/ { builtin[norm($0)] = 1; next }
    {
      path = $1; sub(/:$/, "", path); name = norm(path)
      file[name] = path; deps[name] = ""
      for (i = NF; i >= 2; i--) deps[name] = deps[name] " " $i
    }
    END {
      n = split(want, w, " ")
      for (i = 1; i <= n; i++) {
        m = w[i]; gsub(/-/, "_", m)
        if (m in builtin) continue
        if (!(m in file)) { print "missing " m > "/dev/stderr"; bad = 1; continue }
        k = split(deps[m], d, " ")
        for (j = 1; j <= k; j++) if (!(d[j] in seen)) { seen[d[j]] = 1; print d[j] }
        if (!(file[m] in seen)) { seen[file[m]] = 1; print file[m] }
      }
      exit bad
    }' "$moddir/modules.builtin" "$moddir/modules.dep"
}

# --- the guest's init --------------------------------------------------------------------------------

# Stage 1 (busybox, in the initramfs): modules, the host root with an overlay, the results share.
read -r -d '' init_stage1 <<'EOF' || true
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "vm-init: $*"; echo o >/proc/sysrq-trigger; sleep 30; }
while read -r m; do insmod "/modules/$m" || fail "insmod $m failed"; done </modules/order
# 9p: the protocol Linux speaks, and virtio's largest message size for speed
p9='trans=virtio,version=9p2000.L,msize=512000'
mkdir -p /lower /rw /newroot
mount -t 9p -o "$p9,ro,cache=${tt_9p_cache:-none}" hostroot /lower || fail "cannot mount the host root (9p)"
# the host root, read-only, under a tmpfs: the guest can write anywhere, and it all goes with the guest
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot ||
  fail "cannot mount the overlay on the host root"
mkdir -p /newroot/.tt-vm/results /newroot/.tt-vm/snapshot
mount -t 9p -o "$p9" results /newroot/.tt-vm/results || fail "cannot mount the results share"
if [ "${tt_snapshot:-0}" = 1 ]; then
  mount -t 9p -o "$p9,ro" snapshot /newroot/.tt-vm/snapshot || fail "cannot mount the repository's copy"
fi
cp /stage2 /newroot/.tt-vm/stage2
chmod 0755 /newroot/.tt-vm/stage2
for d in dev proc sys; do mount --move "/$d" "/newroot/$d"; done
exec switch_root /newroot /.tt-vm/stage2
EOF

# Stage 2 (the host's bash, in the overlaid host root, as PID 1): kernel filesystems, writable places,
# modules, then the command, its output to the console and the results share, and power off.
read -r -d '' init_stage2 <<'EOF' || true
#!/bin/bash
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
results=/.tt-vm/results
poweroff_now() { sync; sleep 1; echo o >/proc/sysrq-trigger; sleep 30; }
trap poweroff_now EXIT
# shellcheck disable=SC1091
. "$results/job.env"

# the live repository, held before the tmpfs below can hide it (a checkout under /tmp, say)
mkdir -p /.tt-vm/live
mount --bind "$TT_REPO" /.tt-vm/live || echo "vm: cannot bind the repository $TT_REPO" >&2

mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
# fresh, empty places for what the host keeps there (its /run/netns, its /tmp files)
mount -t tmpfs -o mode=0755 run /run
mkdir -p /run/lock /run/user
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=1777 vartmp /var/tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# the guest kernel's modules where modprobe looks for them
mkdir -p "/lib/modules/$TT_KVER"
mount --bind "$TT_MODULES" "/lib/modules/$TT_KVER"
ip link set lo up
hostname tcptracer-vm
release=$(uname -r)
uname -r >"$results/uname"
echo "vm: guest kernel $(uname -a)"

# the copy of the repository taken at the start, writable under a tmpfs, in the repository's place; the
# live tree's node_modules, .cache and .git bound into it (they were left out of the copy)
mkdir -p "$TT_REPO"
if [ "$TT_SNAPSHOT" = 1 ]; then
  mkdir -p /run/tt-vm/upper /run/tt-vm/work
  mount -t overlay overlay \
    -o lowerdir=/.tt-vm/snapshot,upperdir=/run/tt-vm/upper,workdir=/run/tt-vm/work "$TT_REPO"
  for d in "${TT_SNAPSHOT_SKIP[@]}"; do
    [ -d "/.tt-vm/live/$d" ] || continue
    mkdir -p "$TT_REPO/$d"
    mount --bind "/.tt-vm/live/$d" "$TT_REPO/$d"
  done
elif ! [ -e "$TT_REPO/package.json" ]; then
  # hidden by a tmpfs above: put the live tree back in its place
  mount --bind /.tt-vm/live "$TT_REPO"
fi

cd "$TT_REPO" || exit 1
env -i HOME=/root PATH="$TT_PATH" LANG=C.UTF-8 TERM=dumb USER=root LOGNAME=root \
  TCPTRACER_VM=1 TCPTRACER_VM_KERNEL="$release" "${TT_ENV[@]}" "${TT_CMD[@]}" </dev/null 2>&1 |
  tee "$results/output.log"
echo "${PIPESTATUS[0]}" >"$results/exit-code"
EOF

# build_initramfs KMODDIR OUT: a gzipped cpio with busybox, the 9p/overlay modules and both init stages.
build_initramfs() {
  local moddir=$1 out=$2 work rel name i=0
  work=$(mktemp -d "$run/initramfs.XXXXXX")
  mkdir -p "$work"/{bin,dev,proc,sys,modules}
  cp "$busybox" "$work/bin/busybox"
  printf '%s\n' "$init_stage1" >"$work/init"
  printf '%s\n' "$init_stage2" >"$work/stage2"
  chmod 0755 "$work/init" "$work/stage2"
  local order
  order=$(resolve_modules "$moddir" virtio_pci 9pnet_virtio 9p overlay) ||
    die "$moddir: cannot resolve the 9p and overlay modules"
  : >"$work/modules/order"
  # decompressed here: busybox's insmod does not read every compression a kernel may use
  while read -r rel; do
    [ -n "$rel" ] || continue
    name=$(printf '%02d-%s' "$i" "$(basename "$rel" | sed -E 's/\.(xz|zst|gz)$//')")
    case "$rel" in
      *.xz) xz -dc "$moddir/$rel" >"$work/modules/$name" 2>/dev/null || "$busybox" xz -dc "$moddir/$rel" >"$work/modules/$name" ;;
      *.zst) zstd -qdc "$moddir/$rel" >"$work/modules/$name" ;;
      *.gz) gzip -dc "$moddir/$rel" >"$work/modules/$name" ;;
      *) cp "$moddir/$rel" "$work/modules/$name" ;;
    esac
    echo "$name" >>"$work/modules/order"
    i=$((i + 1))
  done <<<"$order"
  (cd "$work" && find . -print0 | cpio --null -o -H newc --quiet -R 0:0) | gzip -1 >"$out"
  rm -rf "$work"
}

# --- run ---------------------------------------------------------------------------------------------

run=$(mktemp -d /tmp/tcptracer-vm.XXXXXX)
keep=${VM_KEEP:-0}
qemu_pidfile=
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  # a guest still running when this script is stopped (Ctrl-C, SIGTERM from CI) goes with it
  local pid
  if [ -n "$qemu_pidfile" ] && [ -s "$qemu_pidfile" ]; then
    pid=$(<"$qemu_pidfile")
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = qemu-system-x86 ] && kill "$pid" 2>/dev/null
  fi
  if [ "$keep" = 1 ]; then say "kept $run (per kernel: console.log, results/output.log)"; else rm -rf "$run"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The copy of the repository the guests see (see the top): small without these, which the guest reads live
snapshot_skip=(node_modules .cache .git)
snapshot=${VM_SNAPSHOT:-1}
if [ "$snapshot" = 1 ]; then
  mkdir "$run/snapshot"
  excludes=()
  for d in "${snapshot_skip[@]}"; do excludes+=("--exclude=./$d"); done
  tar -C "$repo" "${excludes[@]}" -cf - . | tar -C "$run/snapshot" -xf -
fi
snapshot_share=()
[ "$snapshot" = 1 ] &&
  snapshot_share=(-virtfs "local,path=$run/snapshot,mount_tag=snapshot,security_model=none,readonly=on,multidevs=remap")

names=()
releases=()
verdicts=()
times=()
failed=0

for pkg in "${kernels[@]}"; do
  start=$SECONDS
  release='?'
  verdict=FAIL
  passed=false
  panicked=false
  say "kernel $pkg"
  fetch_kernel "$pkg"
  if ! $fetched; then
    say "$pkg: apt-get download failed"
    verdict="FAIL (no package)"
  else
    kdir=$run/$pkg
    mkdir -p "$kdir/results"
    build_initramfs "$kmods" "$kdir/initrd.gz"
    # the job for stage 2: the command, its environment, where the repository and the modules are
    {
      TT_KVER=$kver TT_MODULES=$kmods TT_REPO=$repo TT_PATH=$guest_path TT_SNAPSHOT=$snapshot
      TT_SNAPSHOT_SKIP=("${snapshot_skip[@]}") TT_ENV=("${pass_env[@]}") TT_CMD=("${cmd[@]}")
      declare -p TT_KVER TT_MODULES TT_REPO TT_PATH TT_SNAPSHOT TT_SNAPSHOT_SKIP TT_ENV TT_CMD
    } >"$kdir/results/job.env"

    # the firmware's terminal escapes and the serial line's carriage returns, out of logs
    strip=$'s/\x1b\\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g; s/\x1b[()][0-9A-Za-z]//g; s/\r//g'
    # One guest at a time on this machine, whichever run started it (a developer's and CI's): two TCG
    # guests share its 2 CPUs, each runs at half speed, and timing-sensitive tests time out. The wait is
    # not counted in the kernel's time.
    exec 8>"$cache/.vm.lock"
    if ! flock -n 8; then
      say "waiting for another VM on this machine to finish (lock $cache/.vm.lock)"
      waited=$SECONDS
      flock 8
      start=$((start + SECONDS - waited))
    fi
    # A guest whose kernel panicked ran no test to its end: that is the emulator's or the guest kernel's
    # failure, not a result (seen once: an int3 left by live code patching, hit on another vCPU, when
    # a tracepoint was enabled under TCG). Such a guest is booted once more, from scratch, and the
    # verdict says so; its console stays in console.1.log. Any other failure counts at once.
    for attempt in 1 2; do
      say "booting $kver under TCG (timeout ${timeout_s}s): ${cmd[*]}"
      # Unknown name=value boot parameters become the environment of the initramfs's /init. Stdin from
      # /dev/null keeps the terminal out of raw mode. The guest runs in the background and this script
      # waits for it, so that Ctrl-C or a SIGTERM is handled at once: the EXIT trap stops the guest.
      qemu_pidfile=$kdir/qemu.pid
      {
        timeout --foreground --kill-after=15 "$timeout_s" qemu-system-x86_64 \
          -accel tcg -cpu max -smp "$smp" -m "$mem" -nographic -no-reboot -pidfile "$qemu_pidfile" \
          -nic none -kernel "$vmlinuz" -initrd "$kdir/initrd.gz" \
          -append "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off tt_9p_cache=${VM_9P_CACHE:-none} tt_snapshot=$snapshot" \
          -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
          -virtfs "local,path=$kdir/results,mount_tag=results,security_model=none,multidevs=remap" \
          "${snapshot_share[@]}"
        echo $? >"$kdir/qemu.rc"
      } </dev/null 2>&1 | sed -u "$strip" | tee "$kdir/console.log" &
      wait $! || true
      qemu_pidfile=
      exec 8>&-
      qemu_rc=$(cat "$kdir/qemu.rc" 2>/dev/null || echo 255)
      if [ "$attempt" = 1 ] && [ ! -s "$kdir/results/exit-code" ] && [ "$qemu_rc" -ne 124 ] &&
        [ "$qemu_rc" -ne 137 ] && grep -q 'Kernel panic - not syncing' "$kdir/console.log"; then
        say "$pkg: THE GUEST KERNEL PANICKED before the tests ended (not a test result; console in $kdir/console.1.log): booting it once more"
        grep -m1 -A3 -E '(Oops|BUG):' "$kdir/console.log" || true
        mv "$kdir/console.log" "$kdir/console.1.log"
        rm -f "$kdir/results/exit-code" "$kdir/results/output.log" "$kdir/results/uname" "$kdir/qemu.rc"
        panicked=true
        exec 8>"$cache/.vm.lock"
        flock 8
        continue
      fi
      break
    done
    [ -s "$kdir/results/uname" ] && release=$(<"$kdir/results/uname")
    if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
      verdict="FAIL (timeout ${timeout_s}s)"
    elif [ ! -s "$kdir/results/exit-code" ]; then
      verdict="FAIL (no exit code: VM failed, qemu exit $qemu_rc)"
    elif [ "$(<"$kdir/results/exit-code")" = 0 ]; then
      verdict=PASS
    else
      verdict="FAIL (exit $(<"$kdir/results/exit-code"))"
    fi
    passed=false
    [ "$verdict" = PASS ] && passed=true
    # node's test runner closes with "ℹ pass N" and "ℹ fail N": show them
    counts=$(sed -nE 's/^ℹ (pass|fail) ([0-9]+)$/\1 \2/p' "$kdir/results/output.log" 2>/dev/null | paste -sd, - || true)
    [ -z "$counts" ] || verdict="$verdict ($counts)"
    ! $panicked || verdict="$verdict, booted twice: the first guest kernel panicked"
  fi
  elapsed=$((SECONDS - start))
  $passed || { failed=1; keep=1; }
  say "$pkg: guest $release: $verdict in ${elapsed}s"
  names+=("$pkg")
  releases+=("$release")
  verdicts+=("$verdict")
  times+=("$elapsed")
done

printf '\n%-40s %-26s %8s  %s\n' "kernel package" "guest uname -r" "time" "result"
for i in "${!names[@]}"; do
  printf '%-40s %-26s %7ss  %s\n' "${names[$i]}" "${releases[$i]}" "${times[$i]}" "${verdicts[$i]}"
done
exit "$failed"
