#!/usr/bin/env bash
# Evaluates services.hyperhive with the real lib.evalModules (module-eval.nix:
# minimal and full configurations, each assertion on its bad input), then
#  - hands every generated daemon config to `hive-core check-config`, the
#    daemon's own parser, with the keys of pending.nix stripped, and each
#    pending key alone to show the core still refuses it by name;
#  - runs hive-web with the ExecStart flags the module rendered (the binary
#    swapped for the one built here, the credentials directory for one that
#    does not exist): the flags must pass hive-web's own parser and
#    validation, so it stops only at reading the tokens file;
#  - rates the rendered hive-web and hive-core units with
#    `systemd-analyze security --offline=true`: hive-web must be at most 1.5.
# Run from anywhere; scripts/test-all.sh runs it.
set -euo pipefail
source "$(dirname "$0")/lib.bash"
name=module-eval
cd "$repo_root"

need_tool "$name" nix-instantiate jq systemd-analyze
need_nixpkgs_lib "$name"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "==> $name: lib.evalModules with $NIXPKGS_LIB"
nix-instantiate --eval --strict --json \
  --arg lib "import $NIXPKGS_LIB" nixos-modules/tests/module-eval.nix >"$work/result.json"
print_checks "$name" "$work/result.json"

# The rendered files, one per key of .files.
while IFS= read -r key; do
  mkdir -p "$work/files/$(dirname "$key")"
  jq -r --arg k "$key" '.files[$k]' "$work/result.json" >"$work/files/$key"
done < <(jq -r '.files | keys[]' "$work/result.json")

echo "==> $name: the generated configs through hive-core's parser"
if [ -z "${HIVE_CORE:-}" ]; then
  cargo build -q --locked -p hive-core --bin hive-core
  HIVE_CORE="${CARGO_TARGET_DIR:-$repo_root/target}/debug/hive-core"
fi
for case in $(jq -r '.configs | keys[]' "$work/result.json"); do
  jq -r --arg c "$case" '.configs[$c].stripped' "$work/result.json" >"$work/$case-stripped.toml"
  if ! out=$("$HIVE_CORE" check-config --config "$work/$case-stripped.toml" 2>&1); then
    echo "FAIL $name: the $case config (pending keys stripped) is refused by hive-core: $out" >&2
    echo "  (a key the module renders that the parser does not know, and pending.nix does not list)" >&2
    exit 1
  fi
  echo "  ok   $case: $out"
  n=$(jq --arg c "$case" '.configs[$c].probes | length' "$work/result.json")
  for ((i = 0; i < n; i++)); do
    key=$(jq -r --arg c "$case" ".configs[\$c].probes[$i].key" "$work/result.json")
    awaits=$(jq -r --arg c "$case" ".configs[\$c].probes[$i].awaits" "$work/result.json")
    jq -r --arg c "$case" ".configs[\$c].probes[$i].toml" "$work/result.json" >"$work/probe.toml"
    if out=$("$HIVE_CORE" check-config --config "$work/probe.toml" 2>&1); then
      echo "  NOTE $case: hive-core now accepts $key; remove it from nixos-modules/tests/pending.nix"
    elif [[ "$out" == *"$key"* ]]; then
      echo "  ok   $case: $key awaits $awaits (refused: ${out#hive-core: })"
    else
      echo "FAIL $name: adding back only $key, hive-core refuses for another reason: $out" >&2
      exit 1
    fi
  done
done

echo "==> $name: the rendered hive-web flags through hive-web's parser"
if [ -z "${HIVE_WEB:-}" ]; then
  cargo build -q --locked -p hive-web --bin hive-web
  HIVE_WEB="${CARGO_TARGET_DIR:-$repo_root/target}/debug/hive-web"
fi
missing_creds=/nonexistent/hive-web-module-test
for case in minimal full; do
  exec_start=$(sed -n 's/^ExecStart=//p' "$work/files/$case/hive-web.service")
  read -r -a argv <<<"$exec_start"
  [[ "${argv[0]}" == */bin/hive-web ]] || { echo "FAIL $name: $case ExecStart is not hive-web: $exec_start" >&2; exit 1; }
  argv=("${argv[@]/\%d/$missing_creds}")
  set +e
  out=$("$HIVE_WEB" "${argv[@]:1}" 2>&1 </dev/null)
  rc=$?
  set -e
  if [ "$rc" -ne 1 ] || [[ "$out" != *"$missing_creds/operator-tokens"* ]]; then
    echo "FAIL $name: hive-web refused the $case flags (exit $rc): $out" >&2
    exit 1
  fi
  echo "  ok   $case: flags accepted, stopped at the tokens file"
done

echo "==> $name: systemd-analyze security --offline=true"
version=$(systemd-analyze --version | sed -n 's/^systemd \([0-9]*\).*/\1/p')
if [ "${version:-0}" -lt 250 ]; then
  skip_or_fail "$name" "systemd $version is older than 250 (no --offline)"
fi
rate() {
  systemd-analyze security --offline=true "$1" 2>&1 |
    sed -n 's/^→ Overall exposure level for [^:]*: \([0-9.]*\) .*/\1/p'
}
for case in minimal full; do
  web=$(rate "$work/files/$case/hive-web.service")
  core=$(rate "$work/files/$case/hive-core.service")
  if [ -z "$web" ] || [ -z "$core" ]; then
    echo "FAIL $name: systemd-analyze gave no rating for the $case units" >&2
    systemd-analyze security --offline=true "$work/files/$case/hive-web.service" >&2 || true
    exit 1
  fi
  echo "  $case: hive-web.service $web, hive-core.service $core"
  if ! awk -v x="$web" 'BEGIN { exit !(x <= 1.5) }'; then
    echo "FAIL $name: hive-web.service ($case) is rated $web, above 1.5:" >&2
    systemd-analyze security --offline=true "$work/files/$case/hive-web.service" | grep '✗' >&2 || true
    exit 1
  fi
done
echo "ok $name"
