#!/usr/bin/env bash
# Install tcptracer-exporter as a systemd service on this host:
#   sudo ./scripts/install.sh              build if needed, install, enable and start
#   sudo ./scripts/install.sh --no-start   install and enable, do not start
#   sudo ./scripts/install.sh --uninstall  stop, disable, unpin the kernel state and remove (keeps the config)
#   sudo ./scripts/install.sh --purge      uninstall and remove the config too
# DESTDIR=/some/root installs into a staging tree and leaves users and systemd alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/opt/tcptracer-exporter}
DESTDIR=${DESTDIR:-}
CONFDIR=/etc/tcptracer-exporter
UNITDIR=/etc/systemd/system
USER_NAME=tcptracer-exporter
action=install
start=1
for arg in "$@"; do
  case "$arg" in
    --no-start) start= ;;
    --uninstall) action=uninstall ;;
    --purge) action=purge ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*" >&2; }
have_systemd() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }
[ "$(id -u)" -eq 0 ] || [ -n "$DESTDIR" ] || { echo "install.sh: run as root" >&2; exit 1; }

if [ "$action" != install ]; then
  if have_systemd; then systemctl disable --now tcptracer-exporter.service 2>/dev/null || true; fi
  # the programs the stopped daemon left counting in the kernel, and their pinned state
  if [ -z "$DESTDIR" ] && [ -f "$PREFIX/dist/src/cli.js" ] && command -v node >/dev/null; then
    node "$PREFIX/dist/src/cli.js" unpin || say "could not remove the pinned kernel state (tcptracer-exporter unpin)"
  fi
  rm -rf "$DESTDIR$PREFIX" "$DESTDIR$UNITDIR/tcptracer-exporter.service"
  [ "$action" != purge ] || rm -rf "$DESTDIR$CONFDIR"
  if have_systemd; then systemctl daemon-reload; fi
  say "removed tcptracer-exporter${action/uninstall/ (config kept in $CONFDIR)}"
  exit 0
fi

# build (installs build dependencies) unless a build is already there
if [ ! -f dist/src/cli.js ] || [ ! -f addon/build/Release/tcptracer.node ] || [ ! -f .output/tcptracer.bpf.o ]; then
  scripts/setup.sh
fi
node_bin=$(command -v node) || { echo "install.sh: node is not on PATH" >&2; exit 1; }

say "installing into $DESTDIR$PREFIX"
rm -rf "$DESTDIR$PREFIX"
install -d -m 0755 "$DESTDIR$PREFIX/addon/build/Release" "$DESTDIR$PREFIX/.output"
cp -a package.json package-lock.json README.md config.example.yml dist "$DESTDIR$PREFIX/"
install -m 0644 addon/build/Release/tcptracer.node "$DESTDIR$PREFIX/addon/build/Release/"
install -m 0644 .output/tcptracer.bpf.o "$DESTDIR$PREFIX/.output/"
cp -a node_modules "$DESTDIR$PREFIX/"
(cd "$DESTDIR$PREFIX" && npm prune --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
chmod -R u=rwX,go=rX "$DESTDIR$PREFIX"

if [ ! -f "$DESTDIR$CONFDIR/config.yaml" ]; then
  install -d -m 0755 "$DESTDIR$CONFDIR"
  install -m 0644 config.example.yml "$DESTDIR$CONFDIR/config.yaml"
  say "wrote the default config $CONFDIR/config.yaml"
else
  say "kept the existing $CONFDIR/config.yaml"
fi
node "$DESTDIR$PREFIX/dist/src/cli.js" check-config --config.file="$DESTDIR$CONFDIR/config.yaml" >/dev/null

install -d -m 0755 "$DESTDIR$UNITDIR"
sed -e "s#/usr/bin/node #$node_bin #" -e "s#/opt/tcptracer-exporter#$PREFIX#g" \
  systemd/tcptracer-exporter.service > "$DESTDIR$UNITDIR/tcptracer-exporter.service"
chmod 0644 "$DESTDIR$UNITDIR/tcptracer-exporter.service"

if [ -n "$DESTDIR" ]; then
  say "staged into $DESTDIR (no user created, systemd untouched)"
  exit 0
fi
id "$USER_NAME" >/dev/null 2>&1 ||
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$USER_NAME"
if have_systemd; then
  systemctl daemon-reload
  if [ -n "$start" ]; then systemctl enable --now tcptracer-exporter.service; else systemctl enable tcptracer-exporter.service; fi
  say "tcptracer-exporter is $(systemctl is-active tcptracer-exporter.service || true): http://localhost:19427/metrics"
else
  say "systemd is not running here: installed the unit, start it with systemctl on a systemd host"
fi
