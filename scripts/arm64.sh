#!/usr/bin/env bash
# The terminal for the boxes' ARM, built and run on this amd64 machine:
#   1. installs (as root) Debian's cross toolchain: the aarch64 gcc, Debian's rustc with the
#      aarch64 standard library (rustc-web, libstd-rust-web-dev:arm64), the arm64 GStreamer
#      of multiarch, and qemu-user-static;
#   2. builds target/debian/cuntong-terminal_VERSION_arm64.deb (scripts/package.sh);
#   3. runs the aarch64 daemon under qemu against a real Mosquitto and an amd64 central:
#      `cuntong-terminal check` passes, and its telemetry is stored and confirmed.
#
#   ./scripts/arm64.sh [--profile release|dev]
#
# Keep the release profile: a debug build under emulation is too slow to be useful (`check`
# alone took over three minutes).
# Too slow for the test command (a cross build of the terminal, then an emulated daemon):
# run it before each release. It needs the amd64 `cuntong` (cargo build -p cuntong).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
profile=release
[ "${1:-}" = --profile ] && profile=$2

need_apt=()
dpkg --print-foreign-architectures | grep -qx arm64 || add_arch=1
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null 2>&1 || need_apt+=(qemu-user-static)
[ -x /usr/bin/rustc ] || need_apt+=(rustc-web cargo-web)
for p in libc6:arm64 libstd-rust-web-dev:arm64 libgstreamer1.0-dev:arm64 libgstreamer-plugins-base1.0-dev:arm64; do
    dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
if [ -n "${add_arch:-}" ] || [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "arm64.sh: as root it installs: arm64 multiarch, ${need_apt[*]}" >&2
        exit 1
    fi
    [ -n "${add_arch:-}" ] && dpkg --add-architecture arm64
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

echo "== the arm64 package"
deb=$(./scripts/package.sh --arch arm64 --profile "$profile" | tail -1)
case "$profile" in release) dir=release ;; *) dir=debug ;; esac
terminal=$root/target/cross/aarch64-unknown-linux-gnu/$dir/cuntong-terminal
file "$terminal" | grep -q "ARM aarch64" || { echo "arm64.sh: $terminal is not an aarch64 binary" >&2; exit 1; }
dpkg-deb --field "$deb" Architecture | grep -qx arm64
echo "$deb"

echo "== the aarch64 daemon under qemu, against Mosquitto and central"
cargo build --locked -p cuntong --bins
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$work/mosquitto.conf"
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosquitto" -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 & pids+=($!)
sleep 0.5
broker=mqtt://127.0.0.1:$port
db=$work/central.db
"$root/target/debug/cuntong" central --broker "$broker" --db "$db" > "$work/central.log" 2>&1 & pids+=($!)
id=130102001001-main
cat > "$work/terminal.toml" <<TOML
id = "$id"
broker = "$broker"
data_dir = "$work/data"

[telemetry]
health_interval = "2s"
TOML
# The arm64 libraries of multiarch (libc6:arm64, GStreamer) are where the binary looks for
# them, so qemu needs no `-L`. Not the cross toolchain's sysroot: its loader with multiarch's
# libc hangs at the first thread.
# Bounded: an emulated command that does not finish is a failure, not a wait.
qemu=(timeout 300 qemu-aarch64-static)
"${qemu[@]}" "$terminal" --version
"${qemu[@]}" "$terminal" --config "$work/terminal.toml" check --timeout 60s
qemu-aarch64-static "$terminal" --config "$work/terminal.toml" run \
    > "$work/terminal.log" 2>&1 & pids+=($!)
# Health telemetry from the emulated box, stored by central and confirmed back to it.
for _ in $(seq 1 120); do
    if "$root/target/debug/cuntong" sites --db "$db" --json 2>/dev/null \
        | python3 -c 'import json,sys; s=[x for x in json.load(sys.stdin) if x["terminal"]=="'"$id"'" and x["online"] and x.get("metrics")]; sys.exit(0 if s else 1)'; then
        stored=$("$root/target/debug/cuntong" telemetry --terminal "$id" --db "$db" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
        confirmed=$("${qemu[@]}" "$terminal" status --json --socket "$work/data/status.sock" \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["outbox"]["confirmed"])' 2>/dev/null || echo "?")
        echo "aarch64 terminal online; $stored samples stored; outbox confirmed: $confirmed"
        exit 0
    fi
    sleep 1
done
echo "arm64.sh: the aarch64 terminal's telemetry did not reach central within 120 s" >&2
tail -20 "$work/terminal.log" "$work/central.log" >&2
exit 1
