#!/usr/bin/env bash
# Evaluates the flake's outputs with stubbed inputs (flake-eval.nix), prints
# every output and what it is, and checks flake.lock's pinned nixpkgs node.
# Nix 2.8 here cannot fetch the real input; this proves the outputs' shape.
set -euo pipefail
source "$(dirname "$0")/lib.bash"
name=flake-eval
cd "$repo_root"
need_tool "$name" nix-instantiate jq
need_nixpkgs_lib "$name"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "==> $name: flake outputs with stubbed inputs"
nix-instantiate --eval --strict --json \
  --arg lib "import $NIXPKGS_LIB" nixos-modules/tests/flake-eval.nix >"$work/result.json"
jq -r '.outputs | to_entries[] | "  \(.key): \(.value)"' "$work/result.json"
print_checks "$name" "$work/result.json"
