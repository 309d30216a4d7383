#!/usr/bin/env bash
# Installs everything hyperhive's tests need on a fresh Debian/Ubuntu machine
# and runs every test. This is the README's test command; .ci/run calls it.
#
# Under CI=true a test that would skip for lack of root or a tool fails
# instead, so nothing passes by not running.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  nftables systemd-container busybox-static bubblewrap iproute2
  nix-bin jq chromium chromium-driver wrk socat sqlite3 python3 python3-venv
)
./scripts/apt-install.sh "${packages[@]}"

# The official MCP Python SDK, the independent client of the MCP conformance
# test (hive-core/tests/core/mcp.rs), pinned, in a venv of its own.
MCP_SDK_VERSION=2.3.0
venv=target/mcp-venv
if ! "$venv/bin/python" -c "import mcp, sys; from importlib.metadata import version; sys.exit(version('mcp') != '$MCP_SDK_VERSION')" 2>/dev/null; then
  echo "==> python venv with mcp==$MCP_SDK_VERSION in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$MCP_SDK_VERSION"
fi
export HIVE_MCP_PYTHON="$PWD/$venv/bin/python"

export CARGO_TERM_COLOR=never
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> build (debug, all targets) and release binaries for the benchmarks"
cargo build --workspace --all-targets --locked
echo "==> cargo test"
cargo test --workspace --locked -- --test-threads=2
echo "==> fuzz targets compile (running them needs nightly: see docs/protocol.md)"
cargo check --manifest-path hive-proto/fuzz/Cargo.toml --bins --locked
echo "==> nix files parse"
while IFS= read -r -d '' f; do
  nix-instantiate --parse "$f" >/dev/null
done < <(find . -name '*.nix' -not -path './target*' -print0)
if [ -d nixos-modules/tests ]; then
  for t in nixos-modules/tests/*.sh; do [ -e "$t" ] && bash "$t"; done
fi
echo "==> all tests passed"
