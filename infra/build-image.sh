#!/usr/bin/env bash
# Builds the ECS task image (functions/task's `backup-task`) as an OCI image
# layout, without a Docker daemon: umoci assembles one layer from the
# binary, the shared libraries it loads (copied from this machine's Debian
# packages, their copyright files along), the CA certificates (Debian's
# ca-certificates) and a passwd naming the non-root user the entrypoint
# runs as. infra/publish-image.sh pushes the layout to ECR with skopeo.
#
#   infra/build-image.sh [--arch amd64|arm64] [--profile release|dev|PROFILE]
#                        [--binary PATH] [--out DIR] [--tag TAG]
#
# --arch     the image's architecture; default this machine's. Another one
#            is cross-built: cargo --target with that architecture's C
#            linker, the image's libraries from Debian's multiarch packages
#            (amd64 host, arm64 image: gcc-aarch64-linux-gnu
#            libc6-dev-arm64-cross libc6:arm64 libgcc-s1:arm64 after
#            `dpkg --add-architecture arm64`, and
#            `rustup target add aarch64-unknown-linux-gnu`).
# --profile  cargo profile the binary is built with (default release).
# --binary   an already built backup-task to package instead (the tests
#            pass the one cargo built for them).
# --out      the OCI layout, made anew (default target/image/oci).
# --tag      the image's tag in the layout (default latest).
#
# Exit 64: bad arguments; 69: what is asked cannot be built here (a missing
# tool or library, named with the package that brings it).
set -euo pipefail
cd "$(dirname "$0")/.."

host_arch=$(dpkg --print-architecture)
arch=$host_arch
profile=release
binary=
out=target/image/oci
tag=latest
user_id=65532

usage() { sed -n '8,24p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --arch | --profile | --binary | --out | --tag)
      [ $# -ge 2 ] || { echo "build-image.sh: $1 needs a value" >&2; exit 64; }
      case $1 in
        --arch) arch=$2 ;;
        --profile) profile=$2 ;;
        --binary) binary=$2 ;;
        --out) out=$2 ;;
        --tag) tag=$2 ;;
      esac
      shift 2
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1" >&2; usage >&2; exit 64 ;;
  esac
done

case $arch in
  amd64) elf_machine=3e00 triple=x86_64-unknown-linux-gnu gnu=x86_64-linux-gnu ;; # EM_X86_64, little-endian
  arm64) elf_machine=b700 triple=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu ;; # EM_AARCH64
  *) echo "build-image.sh: --arch must be amd64 or arm64 (Fargate's two), not $arch" >&2; exit 64 ;;
esac
cross=false
[ "$arch" != "$host_arch" ] && cross=true
missing() { # missing WHAT PACKAGES: exit 69 naming what brings it
  echo "build-image.sh: cannot build an $arch image on this $host_arch machine: $1 is missing ($2)" >&2
  exit 69
}
if $cross; then
  # The libraries the image carries are this architecture's Debian packages
  # (multiarch), whether cargo builds the binary here or it is given.
  dpkg --print-foreign-architectures | grep -qx "$arch" \
    || missing "Debian's $arch architecture" "dpkg --add-architecture $arch && apt-get update"
  [ -e "/usr/lib/$gnu/libc.so.6" ] || missing "$arch libc" "apt-get install libc6:$arch libgcc-s1:$arch"
  command -v readelf >/dev/null || missing "readelf" "apt-get install binutils"
  if [ -z "$binary" ]; then
    command -v "$gnu-gcc" >/dev/null || missing "the $arch C linker $gnu-gcc" "apt-get install gcc-$gnu libc6-dev-$arch-cross"
    [ -d "$(rustc --print sysroot)/lib/rustlib/$triple/lib" ] \
      || missing "Rust's $triple standard library" "rustup target add $triple"
  fi
fi
command -v umoci >/dev/null || { echo "build-image.sh: needs umoci (apt-get install umoci)" >&2; exit 69; }
[ -r /etc/ssl/certs/ca-certificates.crt ] || { echo "build-image.sh: needs Debian's ca-certificates (apt-get install ca-certificates)" >&2; exit 69; }

if [ -z "$binary" ]; then
  profile_dir=$profile
  [ "$profile" = dev ] && profile_dir=debug
  if $cross; then
    # cargo's names for the target's variables: upper case, or as the triple.
    upper=$(echo "$triple" | tr a-z- A-Z_)
    under=$(echo "$triple" | tr - _)
    export "CARGO_TARGET_${upper}_LINKER=$gnu-gcc" "CC_${under}=$gnu-gcc" "AR_${under}=$gnu-ar"
    # openssl-sys finds the target's libssl through pkg-config's multiarch
    # directory, never the host's.
    export "PKG_CONFIG_ALLOW_CROSS=1" "PKG_CONFIG_LIBDIR_${under}=/usr/lib/$gnu/pkgconfig:/usr/share/pkgconfig"
    cargo build --locked --profile "$profile" -p backup-task --target "$triple"
    binary=${CARGO_TARGET_DIR:-target}/$triple/$profile_dir/backup-task
  else
    cargo build --locked --profile "$profile" -p backup-task
    binary=${CARGO_TARGET_DIR:-target}/$profile_dir/backup-task
  fi
fi
[ -x "$binary" ] || { echo "build-image.sh: no executable at $binary" >&2; exit 64; }
if [ "$(od -An -tx1 -j18 -N2 "$binary" | tr -d ' \n')" != "$elf_machine" ]; then
  echo "build-image.sh: $binary is not an $arch executable" >&2
  exit 64
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootless=()
[ "$(id -u)" = 0 ] || rootless=(--rootless)

# A fresh layout: a tag from an older build is never mixed into it.
if [ -e "$out" ]; then
  [ -f "$out/oci-layout" ] || { echo "build-image.sh: $out exists and is not an OCI layout; not touching it" >&2; exit 64; }
  rm -rf "$out"
fi
mkdir -p "$(dirname "$out")"
umoci init --layout "$out"
umoci new --image "$out:$tag"
umoci unpack "${rootless[@]}" --image "$out:$tag" "$work/bundle"
rootfs=$work/bundle/rootfs

install -D -m 0755 "$binary" "$rootfs/usr/local/bin/backup-task"

# The libraries the binary loads, at the paths the dynamic loader looks
# for them (the interpreter's path is written in the binary), and the
# Debian packages they came from.
packages=(ca-certificates)
# The binary's own libraries, and theirs: the loader (PT_INTERP) at the
# path written in the binary, the rest from the multiarch directories the
# loader searches. ldd runs the binary's loader, so only for this machine's
# architecture; another's ELF headers are read with readelf.
foreign_libraries() {
  local -A seen=()
  local queue=("$1") file needed dir found interpreter
  interpreter=$(readelf -l "$1" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p')
  if [ -n "$interpreter" ]; then
    echo "$interpreter"
    # libc names the loader too; the one already loaded answers for it.
    seen[$(basename "$interpreter")]=1
  fi
  while [ ${#queue[@]} -gt 0 ]; do
    file=${queue[0]}
    queue=("${queue[@]:1}")
    while read -r needed; do
      [ -n "${seen[$needed]:-}" ] && continue
      seen[$needed]=1
      found=
      for dir in "/lib/$gnu" "/usr/lib/$gnu"; do
        [ -e "$dir/$needed" ] && { found=$dir/$needed; break; }
      done
      [ -n "$found" ] || missing "$needed (needed by $(basename "$file"))" "apt-cache search the $arch package holding it"
      echo "$found"
      queue+=("$found")
    done < <(readelf -d "$file" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  done
}
if $cross; then
  libraries=$(foreign_libraries "$binary")
else
  libraries=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
fi
qualifier=
$cross && qualifier=:$arch
while read -r library; do
  [ -n "$library" ] || continue # a static binary loads none
  # Their own modes: the loader must stay executable.
  install -D -m "$(stat -L -c %a "$library")" "$library" "$rootfs$library"
  owner=$(dpkg -S "$library" 2>/dev/null || dpkg -S "$(realpath "$library")" 2>/dev/null || true)
  [ -n "$owner" ] && packages+=("${owner%%:*}")
done <<<"$libraries"
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
described=()
for package in "${packages[@]}"; do
  package_version=$(dpkg-query -W -f='${Version}' "$package$qualifier" 2>/dev/null || dpkg-query -W -f='${Version}' "$package")
  described+=("$package=$package_version")
  # Their licences travel with them.
  if [ -f "/usr/share/doc/$package/copyright" ]; then
    install -D -m 0644 "/usr/share/doc/$package/copyright" "$rootfs/usr/share/doc/$package/copyright"
  fi
done

install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nbackup:x:%s:%s:backup:/nonexistent:/sbin/nologin\n' "$user_id" "$user_id" >"$rootfs/etc/passwd"
printf 'root:x:0:\nbackup:x:%s:\n' "$user_id" >"$rootfs/etc/group"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
mkdir -p "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"

umoci repack --image "$out:$tag" "$work/bundle"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
created=()
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
  created=(--created "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)")
fi
umoci config --image "$out:$tag" "${created[@]}" \
  --architecture "$arch" --os linux \
  --config.user "$user_id:$user_id" \
  --config.entrypoint /usr/local/bin/backup-task \
  --config.env PATH=/usr/local/bin \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.workingdir /tmp \
  --config.stopsignal SIGTERM \
  --config.label org.opencontainers.image.title=pgbackup-task \
  --config.label "org.opencontainers.image.description=PostgreSQL backup and restore engine for ECS Fargate: backup-task create|restore|verify" \
  --config.label org.opencontainers.image.licenses=Apache-2.0 \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.revision=$revision" \
  --config.label "io.pgbackup.cargo-profile=$profile" \
  --config.label "io.pgbackup.debian-packages=${described[*]}"
umoci gc --layout "$out"

echo "built $out:$tag ($arch, profile $profile): $(du -sb "$out" | cut -f1) bytes; packages from Debian: ${described[*]}"
