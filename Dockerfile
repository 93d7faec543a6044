# tcptracer-exporter container image.
#
#   docker build -t tcptracer-exporter:0.1.0 .
#
# Node.js 26 is the Active LTS line (26.13.0 "Lithium", 2026-10-28). Both FROM lines name the same major:
# test/privileged/deploy/node-lts.test.ts reads it from here and runs the exporter under that Node.
# test/privileged/deploy/image-build.test.ts builds the image without a container engine: it runs both
# stages' steps in clean Debian bookworm roots that hold only the packages each stage installs, and Node.
#
# Running it. The exporter counts TCP events for the whole host from inside the container (BPF programs are
# not namespaced), but it needs privileges a default container does not have:
#
#   sudo install -d -o 10001 -g 10001 -m 0700 /sys/fs/bpf/tcptracer-exporter
#   docker run -d --name tcptracer-exporter \
#     --pid=host \
#     --cap-drop=ALL --cap-add=BPF --cap-add=PERFMON --cap-add=SYS_PTRACE --cap-add=DAC_READ_SEARCH \
#     --security-opt apparmor=unconfined \
#     -p 19427:19427 \
#     -v /etc/tcptracer-exporter/config.yaml:/etc/tcptracer-exporter/config.yaml:ro \
#     -v /sys/fs/bpf/tcptracer-exporter:/run/tcptracer-exporter \
#     tcptracer-exporter:0.1.0
#
# --pid=host        the host's /proc: who owns the sockets that were open before the exporter started, and
#                   which container a network namespace belongs to. Without it the counters still cover the
#                   whole host, but only the container's own processes are seen in /proc.
# --cap-add=...     CAP_BPF (maps, programs) and CAP_PERFMON (tracing programs, kernel >= 5.8);
#                   CAP_SYS_PTRACE (readlink /proc/PID/fd/* and /proc/PID/ns/net of other users' processes);
#                   CAP_DAC_READ_SEARCH (list /proc/PID/fd, mode 0500, of other users' processes; read tracefs).
#                   The process runs as uid 10001, and Docker gives a non-root user no capabilities of its own
#                   (it never sets ambient capabilities), so the node binary below carries them as file
#                   capabilities. Consequence: without these four --cap-add flags every command of the image,
#                   even --version, fails with "exec ... operation not permitted".
# --security-opt apparmor=unconfined
#                   only on hosts with AppArmor (Ubuntu, Debian): the docker-default profile allows ptrace
#                   reads only of processes under that same profile, so reading host processes' /proc/PID/fd
#                   and /proc/PID/ns links is refused. Counting works without it; seeding of older sockets
#                   and netns names do not. A custom profile with `ptrace (read) peer=unconfined` also works.
# seccomp           nothing to add on Docker Engine 23.0 or newer: its default profile allows bpf() to
#                   containers with CAP_BPF and perf_event_open() to those with CAP_PERFMON. Older engines
#                   need a profile that allows both (or --security-opt seccomp=unconfined).
# -p 19427:19427    the metrics port (or --network host and no -p).
# -v .../config.yaml  your config; the image ships config.example.yml there, every default spelled out.
#                   `docker kill -s HUP tcptracer-exporter` reloads it.
# -v /sys/fs/bpf/tcptracer-exporter:/run/tcptracer-exporter
#                   the host's bpffs directory for the pinned kernel state, so that a restart or an upgrade
#                   of the container loses no count; created for uid 10001 by the install line above. The
#                   CMD below pins there (--bpf.pin-path): a container's /sys is a sysfs of its own, in
#                   which no mount point can be created, so the directory cannot go at the host's path.
#                   Without it the exporter runs unpinned and says so.
#
# Not needed: -v /sys/kernel/btf (BTF is part of sysfs, which every container mounts), --privileged,
# CAP_SYS_ADMIN or CAP_NET_ADMIN (kernels >= 5.8). Do not add --security-opt no-new-privileges: it
# disables file capabilities and the exporter then has none. Rootless Docker and userns-remap cannot work:
# tracing programs need the capabilities in the host's user namespace.
# Optional: --cgroupns=host for the `cgroup` label (a private cgroup namespace shows only the container's
# own cgroups); -v /run/netns:/run/netns:ro,rslave to name `ip netns` namespaces;
# -v /sys/kernel/tracing:/sys/kernel/tracing:ro for accept_mode: syscall (its tracepoints are attached by
# their tracefs id, and a container's /sys has no tracefs); on kernels older than 5.11, --ulimit
# memlock=-1:-1 (BPF memory counts against RLIMIT_MEMLOCK there).

FROM node:26-bookworm AS build
# the same build packages scripts/setup.sh installs, less the test-only ones; from the base image the
# build needs only Debian's minimal system, Node and npm
RUN apt-get update \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    clang llvm libbpf-dev libelf-dev zlib1g-dev make g++ python3 pkg-config \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# node-gyp builds the addon against this Node's own headers instead of downloading them. node-gyp reads
# the variable itself: npm 11's warning on every command, Unknown env config "nodedir", is harmless
ENV npm_config_nodedir=/usr/local
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
# the product's build (scripts/build.sh: BPF object, addon, TypeScript; the test helpers are not part of
# it); then only production dependencies stay, and the smoke test runs against exactly what the runtime
# stage copies
RUN npm run build \
  && npm prune --omit=dev --no-audit --no-fund \
  && node dist/src/cli.js --version \
  && node dist/src/cli.js check-config --config.file=config.example.yml

FROM node:26-bookworm-slim AS runtime
ARG VERSION=0.1.0
# set with --build-arg: the repository's URL and the commit the image is built from
ARG SOURCE=""
ARG REVISION=""
LABEL org.opencontainers.image.title="tcptracer-exporter" \
  org.opencontainers.image.description="Prometheus exporter and live tracer for every TCP connect, accept and close, per process and network namespace, using eBPF" \
  org.opencontainers.image.source="${SOURCE}" \
  org.opencontainers.image.revision="${REVISION}" \
  org.opencontainers.image.licenses="Apache-2.0" \
  org.opencontainers.image.version="${VERSION}"
# the addon links libbpf, libelf and zlib dynamically; libcap2-bin only for setcap, removed below
RUN apt-get update \
  && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libbpf1 libelf1 zlib1g libcap2-bin \
  && rm -rf /var/lib/apt/lists/* \
  && groupadd --system --gid 10001 tcptracer \
  && useradd --system --uid 10001 --gid tcptracer --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin tcptracer
# the layout src/kernel/paths.ts expects: package.json at the root, the addon and the BPF object beside dist/
WORKDIR /opt/tcptracer-exporter
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/addon/build/Release/tcptracer.node ./addon/build/Release/tcptracer.node
COPY --from=build /src/.output/tcptracer.bpf.o ./.output/tcptracer.bpf.o
COPY config.example.yml /etc/tcptracer-exporter/config.yaml
# Smoke test with the runtime libraries, then give node the four capabilities (see `docker run` above).
# After setcap, node only starts where those capabilities are in the bounding set: nothing after this
# line may run node.
RUN node dist/src/cli.js --version \
  && node dist/src/cli.js check-config --config.file=/etc/tcptracer-exporter/config.yaml \
  && setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search=ep /usr/local/bin/node \
  && getcap /usr/local/bin/node | grep -q cap_bpf \
  && apt-get purge -y libcap2-bin
# the tcptracer user created above; numeric, so that Kubernetes' runAsNonRoot can check it
USER 10001:10001
EXPOSE 19427
# node itself, as the slim image has no curl; 127.0.0.1:19427 is the default listen address
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:19427/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "/opt/tcptracer-exporter/dist/src/cli.js"]
CMD ["run", "--config.file=/etc/tcptracer-exporter/config.yaml", "--bpf.pin-path=/run/tcptracer-exporter"]
