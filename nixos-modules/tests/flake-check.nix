# checks.<system>.eval: the module evaluated by the real NixOS module system
# (nixpkgs' own option declarations, not the stubs of module-eval.nix) for a
# minimal host, its assertions forced, and the units NixOS renders rated by
# systemd-analyze in the build sandbox: hive-web at most 1.5. Needs a Nix with
# the pinned nixpkgs; the Debian test evaluates only its flake attribute.
{ pkgs, lib, module, nixosSystem }:
let
  host = nixosSystem {
    modules = [
      module
      {
        boot.loader.grub.enable = false;
        fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
        system.stateVersion = "25.11";
        services.hyperhive = {
          enable = true;
          web.operatorTokensFile = "/run/secrets/hyperhive-operator-tokens";
        };
      }
    ];
  };
  failed = map (a: a.message) (lib.filter (a: !a.assertion) host.config.assertions);
  unit = name: host.config.systemd.units.${name}.unit;
  # Forced when the check is built, not when the flake's outputs are listed.
  assertionsHold = lib.assertMsg (failed == [ ]) "services.hyperhive assertions failed: ${toString failed}";
in
pkgs.runCommand "hyperhive-module-eval" { nativeBuildInputs = [ pkgs.systemd ]; } ''
  # assertions hold: ${lib.boolToString assertionsHold}
  rate() {
    systemd-analyze security --offline=true "$1" 2>&1 |
      sed -n 's/^→ Overall exposure level for [^:]*: \([0-9.]*\) .*/\1/p'
  }
  cp ${unit "hive-web.service"}/hive-web.service ${unit "hive-core.service"}/hive-core.service .
  web=$(rate hive-web.service)
  core=$(rate hive-core.service)
  echo "hive-web.service $web, hive-core.service $core" | tee $out
  awk -v x="$web" 'BEGIN { exit !(x <= 1.5) }'
''
