# Evaluates services.hyperhive with the real `lib.evalModules` against the
# stub option declarations, for one configuration module, and returns what
# the tests look at: failed assertions, warnings, every unit rendered to its
# file text, tmpfiles, users, groups, the generated settings and their TOML.
{ lib, configuration }:
let
  pkgs = import ./stub-pkgs.nix { inherit lib; };
  renderUnit = import ./render-unit.nix { inherit lib; };
  evaluated = lib.evalModules {
    modules = [
      ./stubs.nix
      ../hyperhive.nix
      { _module.args.pkgs = pkgs; }
      configuration
    ];
  };
  cfg = evaluated.config;
  coreConfig = pkgs.formats.toml { };
in
{
  inherit pkgs cfg;
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);
  warnings = cfg.warnings;
  services = cfg.systemd.services;
  units = lib.mapAttrs' (name: s: lib.nameValuePair "${name}.service" (renderUnit s)) cfg.systemd.services;
  tmpfiles = cfg.systemd.tmpfiles.rules;
  users = cfg.users.users;
  groups = cfg.users.groups;
  systemPackages = map (p: p.name) cfg.environment.systemPackages;
  firewallPorts = cfg.networking.firewall.allowedTCPPorts;
  settings = cfg.services.hyperhive.settings;
  configFile = coreConfig.generate "hive-core.toml" cfg.services.hyperhive.settings;
  toTOML = pkgs.toTOML;
}
