#!/usr/bin/env bash
# Builds the Debian packages of a release:
#   cuntong-terminal_VERSION_ARCH.deb  the box's daemon (run, check, status) and its unit
#   cuntong_VERSION_ARCH.deb           central and the CLI, and central's unit
#
#   ./scripts/package.sh [--arch amd64|arm64] [--out DIR] [--profile release|dev] [--bin-dir DIR]
#
# `--bin-dir` packs binaries already built there instead of building them (the tests pack
# the debug build they run).
# The files go where Debian expects them (/usr/bin, /lib/systemd/system, /etc/cuntong for the
# provisioning bundle, /var/lib/cuntong for state, a `cuntong` system user), packed with
# Debian's own dpkg-deb; the shared libraries the binaries link are found by dpkg-shlibdeps.
# `--arch arm64` on an amd64 machine cross-builds the terminal with Debian's rustc and the
# arm64 GStreamer of multiarch (see scripts/arm64.sh, which installs them); central is built
# for the machine's own architecture only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

arch=$(dpkg --print-architecture)
out=$root/target/debian
profile=release
prebuilt=
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --profile) profile=$2; shift 2 ;;
        --bin-dir) prebuilt=$2; shift 2 ;;
        *) echo "package.sh: unknown argument $1 (--arch amd64|arm64, --out DIR, --profile release|dev, --bin-dir DIR)" >&2; exit 2 ;;
    esac
done
case "$profile" in
    release) profile_dir=release ;;
    dev|debug) profile=dev; profile_dir=debug ;;
    *) echo "package.sh: --profile is release or dev, not $profile" >&2; exit 2 ;;
esac
case "$arch" in
    amd64) triple=x86_64-unknown-linux-gnu ;;
    arm64) triple=aarch64-unknown-linux-gnu ;;
    *) echo "package.sh: --arch is amd64 or arm64, not $arch" >&2; exit 2 ;;
esac
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }
mkdir -p "$out"

native=$(dpkg --print-architecture)
if [ -n "$prebuilt" ]; then
    bin_dir=$prebuilt
    packages=(cuntong-terminal)
    [ "$arch" = "$native" ] && packages+=(cuntong)
elif [ "$arch" = "$native" ]; then
    cargo build --locked --profile "$profile" -p cuntong-terminal -p cuntong --bins
    bin_dir=$root/target/$profile_dir
    packages=(cuntong-terminal cuntong)
else
    # Debian's compiler and the target's standard library (rustc-web, libstd-rust-web-dev).
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_PATH=/usr/lib/aarch64-linux-gnu/pkgconfig
    export PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig
    # A target directory of its own: another compiler's build scripts and proc macros.
    export CARGO_TARGET_DIR=$root/target/cross
    RUSTC=/usr/bin/rustc /usr/bin/cargo build --locked --profile "$profile" --target "$triple" \
        -p cuntong-terminal --bins
    bin_dir=$CARGO_TARGET_DIR/$triple/$profile_dir
    packages=(cuntong-terminal)
fi

# The shared-library dependencies of the binaries, as dpkg-shlibdeps finds them.
shlibs() {
    local work
    work=$(mktemp -d)
    mkdir -p "$work/debian"
    printf 'Source: cuntong\n\nPackage: %s\nArchitecture: any\n' "$1" > "$work/debian/control"
    shift
    if ! (cd "$work" && dpkg-shlibdeps -O -l"/usr/lib/$(dpkg-architecture -a"$arch" -qDEB_HOST_MULTIARCH 2>/dev/null)" \
        "$@" 2>"$work/errors" | sed -n 's/^shlibs:Depends=//p'); then
        echo "package.sh: dpkg-shlibdeps failed on $*:" >&2
        cat "$work/errors" >&2
        rm -rf "$work"
        return 1
    fi
    rm -rf "$work"
}

for pkg in "${packages[@]}"; do
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    case "$pkg" in
        cuntong-terminal)
            bins=(cuntong-terminal)
            unit=packaging/terminal/cuntong-terminal.service
            summary="cuntong terminal: a site box's telemetry, presence, commands and meetings"
            extra="gstreamer1.0-plugins-base, gstreamer1.0-plugins-good, gstreamer1.0-plugins-bad, gstreamer1.0-alsa, gstreamer1.0-x, fonts-noto-cjk"
            recommends="gstreamer1.0-plugins-ugly"
            # Enabled at install: it starts once the provisioning bundle is in /etc/cuntong.
            enable=yes other=cuntong
            ;;
        cuntong)
            bins=(cuntong)
            unit=packaging/central/cuntong-central.service
            summary="cuntong central and CLI: provisioning, fleet monitoring, meetings, alarms"
            extra=""
            recommends="mosquitto"
            # The CLI's machines (a technician's laptop) run no central unless asked to.
            enable=no other=cuntong-terminal
            ;;
    esac
    install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
        "$stage/etc/cuntong" "$stage/usr/share/doc/$pkg"
    for b in "${bins[@]}"; do
        install -m 0755 "$bin_dir/$b" "$stage/usr/bin/$b"
        # Debug info stays in the build tree: the box's flash is small.
        if [ "$profile" = release ]; then
            if [ "$arch" = "$native" ]; then strip "$stage/usr/bin/$b"; else aarch64-linux-gnu-strip "$stage/usr/bin/$b"; fi
        fi
    done
    install -m 0644 "$unit" "$stage/lib/systemd/system/"
    install -m 0644 README.md "$stage/usr/share/doc/$pkg/README.md"
    gzip -9n < docs/operations.md > "$stage/usr/share/doc/$pkg/operations.md.gz"
    printf 'Files: *\nCopyright: the cuntong developers\nLicense: %s\n' \
        "$(sed -n 's/^license = "\(.*\)"$/\1/p' Cargo.toml | head -1)" > "$stage/usr/share/doc/$pkg/copyright"
    depends=$(shlibs "$pkg" "${bins[@]/#/$stage/usr/bin/}")
    depends="adduser${depends:+, $depends}${extra:+, $extra}"
    size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    cat > "$stage/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: cuntong developers <cuntong@localhost>
Section: net
Priority: optional
Installed-Size: $size
Depends: $depends
Recommends: $recommends
Description: $summary
 Part of cuntong, the video-conference and telemetry system of a provincial
 e-government network's county offices and village service points.
CONTROL
    for script in postinst prerm postrm; do
        sed -e "s/@UNIT@/$(basename "$unit")/g" -e "s/@PACKAGE@/$pkg/g" -e "s/@ENABLE@/$enable/g" \
            -e "s/@OTHER@/$other/g" "packaging/$script" > "$stage/DEBIAN/$script"
        chmod 0755 "$stage/DEBIAN/$script"
    done
    deb="$out/${pkg}_${version}_${arch}.deb"
    # xz for a release (the boxes' links are metered); a quick gzip for a debug build's test.
    if [ "$profile" = release ]; then compress=(-Zxz); else compress=(-Zgzip -z1); fi
    dpkg-deb --root-owner-group "${compress[@]}" --build "$stage" "$deb" >/dev/null
    rm -rf "$stage"
    trap - EXIT
    echo "$deb"
done
