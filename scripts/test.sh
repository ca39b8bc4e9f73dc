#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root) or a developer's box.
# Installs what is missing (Mosquitto for the broker tests, NATS for the broker cluster test,
# PostgreSQL for the store's, Chromium for the dashboard's browser test, GStreamer and ffmpeg
# for media, baresip for the SIP gateway's, iproute2 for the rural link's), then checks
# formatting, lints, the no_std build of the core, and runs every test against the real
# binaries and brokers.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
# The broker cluster test: three NATS nodes (JetStream with its MQTT listener).
[ -x /usr/sbin/nats-server ] || [ -x /usr/bin/nats-server ] || need_apt+=(nats-server)
# The SIP gateway's test: Debian's baresip (with its H.264 module) stands for a room system.
command -v baresip >/dev/null 2>&1 || need_apt+=(baresip-core)
[ -e /usr/lib/baresip/modules/avcodec.so ] || need_apt+=(baresip-ffmpeg)
# The rural link test: sites in network namespaces behind rate-limited veth pairs.
[ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need_apt+=(iproute2)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# The packages' test: dpkg-shlibdeps finds the libraries the binaries link; systemd-analyze
# verifies the units and rates their exposure.
command -v dpkg-shlibdeps >/dev/null 2>&1 || need_apt+=(dpkg-dev)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# The dashboard's browser test: Debian's Chromium driven through ChromeDriver.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
# Chinese names on the dashboard: a CJK font, so the page (and its screenshots) show them.
[ -d /usr/share/fonts/opentype/noto ] && ls /usr/share/fonts/opentype/noto/NotoSansCJK* >/dev/null 2>&1 \
    || need_apt+=(fonts-noto-cjk)
# The store's tests on PostgreSQL: Debian's server (a throwaway cluster per test run, started
# as the `postgres` user).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# Meeting media: GStreamer's libraries (for the build) and plugins (for the pipelines: x264,
# openh264, libav, SRTP, RTP; pango for the room's captions), and ffmpeg for the interop test.
if command -v dpkg >/dev/null 2>&1; then
    arch=$(dpkg --print-architecture)
    for p in libgstreamer1.0-dev gstreamer1.0-plugins-base \
        gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly \
        gstreamer1.0-libav gstreamer1.0-x ffmpeg; do
        # Installed for this machine's architecture (the arm64 build installs some for arm64 too).
        dpkg-query -W -f='${Status}\n' "$p:$arch" 2>/dev/null | grep -q "ok installed" || need_apt+=("$p")
    done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "installing: ${need_apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    else
        echo "missing packages: ${need_apt[*]} (run as root, or: sudo apt-get install ${need_apt[*]})" >&2
        exit 1
    fi
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

# A one-off build: incremental caches would only take disk (gigabytes across the test binaries).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== format"
cargo fmt --all -- --check
echo "== lint"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== core without std"
cargo build -p cuntong-core --no-default-features --locked
echo "== fuzz targets compile"
# One target directory for the three: they share most of their dependencies.
for crate in core terminal cli; do
    CARGO_TARGET_DIR="$PWD/target/fuzz-check" cargo check --bins --locked \
        --manifest-path "$crate/fuzz/Cargo.toml"
done
echo "== build"
cargo build --workspace --bins --locked
echo "== tests"
cargo test --workspace --locked
