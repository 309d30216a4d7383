# Shared by the nixos-modules tests (sourced, not run). Resolves the nixpkgs
# `lib` the evaluation uses and says how a missing tool is reported: off CI a
# skip with its reason, under CI=true a failure, so nothing passes by not
# running.
#
# NIXPKGS_LIB: a nixpkgs `lib` directory; default ../shared/vendor/nixpkgs-lib/lib
# beside the repository (never a copy inside it).

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Debian's nix-bin names a build-users group that a machine without a Nix
# daemon lacks; evaluation never builds, so none is needed.
export NIX_CONFIG="build-users-group =
${NIX_CONFIG:-}"

# skip_or_fail TEST REASON: exit 0 with a note, or 1 under CI=true.
skip_or_fail() {
  if [ "${CI:-}" = "true" ]; then
    echo "FAIL $1: $2 (under CI=true a skip is a failure)" >&2
    exit 1
  fi
  echo "SKIP $1: $2"
  exit 0
}

# need_nixpkgs_lib TEST: sets NIXPKGS_LIB to an absolute path or skips/fails.
need_nixpkgs_lib() {
  local lib="${NIXPKGS_LIB:-$repo_root/../shared/vendor/nixpkgs-lib/lib}"
  if [ ! -f "$lib/default.nix" ]; then
    skip_or_fail "$1" "no nixpkgs lib at $lib (set NIXPKGS_LIB to a nixpkgs lib directory)"
  fi
  case "$(cd "$lib" && pwd)/" in
    "$repo_root"/*) echo "FAIL $1: NIXPKGS_LIB=$lib is inside the repository; it must stay outside" >&2; exit 1 ;;
  esac
  NIXPKGS_LIB=$(cd "$lib" && pwd)
  export NIXPKGS_LIB
}

# need_tool TEST TOOL...: skips/fails unless every TOOL is on PATH.
need_tool() {
  local t=$1; shift
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || skip_or_fail "$t" "$tool is not installed"
  done
}

# print_checks TEST JSON: prints each {name, ok, detail} of .checks; exits 1 if any failed.
print_checks() {
  local failed
  jq -r '.checks[] | if .ok then "  ok   \(.name)" else "  FAIL \(.name): \(.detail)" end' "$2"
  failed=$(jq '[.checks[] | select(.ok | not)] | length' "$2")
  if [ "$failed" -ne 0 ]; then
    echo "FAIL $1: $failed of $(jq '.checks | length' "$2") checks failed" >&2
    exit 1
  fi
  echo "ok $1: $(jq '.checks | length' "$2") checks"
}
