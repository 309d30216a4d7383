#!/usr/bin/env bash
# The README's run command: installs what an isolated local hive needs on a
# fresh Debian/Ubuntu machine (bubblewrap for the process runtime,
# systemd-container for nspawn), the way scripts/test-all.sh installs its
# packages, builds the workspace and starts `hive-core dev`. Extra arguments
# go to `hive-core dev` (e.g. --agents a,b, --allow-unsandboxed).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(bubblewrap systemd-container)
./scripts/apt-install.sh "${packages[@]}"

cargo build --release --workspace
exec ./target/release/hive-core dev --state-dir ./hive-dev --listen 127.0.0.1:8080 "$@"
