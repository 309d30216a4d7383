# Stub declarations of the NixOS options services.hyperhive sets or reads,
# with the types NixOS gives them (nixos/modules/misc/assertions.nix,
# config/users-groups.nix, system/boot/systemd.nix, system/boot/systemd/tmpfiles.nix,
# config/system-path.nix, services/networking/firewall.nix,
# services/networking/tailscale.nix). No freeform types: a misspelt option
# in the module is an evaluation error here as it is on NixOS.
#
# Used only by the evaluation tests; never imported by a real system.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  unitPrimitive = types.oneOf [ types.bool types.int types.str types.path ];
  unitOption = types.either unitPrimitive (types.listOf unitPrimitive);
  unitList = mkOption { type = types.listOf types.str; default = [ ]; };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    users.users = mkOption {
      default = { };
      type = types.attrsOf (types.submodule {
        options = {
          isSystemUser = mkOption { type = types.bool; default = false; };
          isNormalUser = mkOption { type = types.bool; default = false; };
          group = mkOption { type = types.str; default = ""; };
          description = mkOption { type = types.str; default = ""; };
          extraGroups = mkOption { type = types.listOf types.str; default = [ ]; };
        };
      });
    };
    users.groups = mkOption {
      default = { };
      type = types.attrsOf (types.submodule {
        options.members = mkOption { type = types.listOf types.str; default = [ ]; };
        options.gid = mkOption { type = types.nullOr types.int; default = null; };
      });
    };

    systemd.services = mkOption {
      default = { };
      type = types.attrsOf (types.submodule {
        options = {
          description = mkOption { type = types.str; default = ""; };
          wantedBy = unitList;
          after = unitList;
          before = unitList;
          requires = unitList;
          wants = unitList;
          bindsTo = unitList;
          partOf = unitList;
          restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
          path = mkOption { type = types.listOf types.unspecified; default = [ ]; };
          environment = mkOption { type = types.attrsOf types.str; default = { }; };
          unitConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
          serviceConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
        };
      });
    };
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };

    services.tailscale = {
      enable = mkOption { type = types.bool; default = false; };
      package = mkOption { type = types.package; };
    };
  };
}
