# The hyperhive NixOS module: `services.hyperhive`. This first version runs
# the root daemon with the process runtime's configuration; the container
# runtime, network pool and egress, tailscale serve and the gateway's
# hardening options arrive with their issues (see TODO-ops.md).
{ self }:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.hyperhive;
  toml = pkgs.formats.toml { };
  coreConfig = toml.generate "hyperhive.toml" {
    state_dir = "/var/lib/hyperhive";
    runtime_dir = "/run/hyperhive";
    admin_group = "hive-admin";
    web_user = "hive-web";
    runtime = "detached";
    agents = lib.mapAttrs (_: a: { allowed_recipients = a.allowedRecipients; }) cfg.agents;
  };
in
{
  options.services.hyperhive = {
    enable = lib.mkEnableOption "the hyperhive agent host";
    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      description = "The hyperhive package (hive-core, hive-web, hivectl, hive-agent).";
    };
    agents = lib.mkOption {
      default = { };
      description = "Agents of the hive, by name ([a-z][a-z0-9-]{0,30}).";
      type = lib.types.attrsOf (lib.types.submodule {
        options.allowedRecipients = lib.mkOption {
          type = lib.types.listOf lib.types.str;
          default = [ "*" ];
          description = "Whom the agent may message: agent names, \"operator\", or \"*\".";
        };
      });
    };
    adminUsers = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "Users added to hive-admin, who may use hivectl on admin.sock.";
    };
  };

  config = lib.mkIf cfg.enable {
    users.groups.hive-admin.members = cfg.adminUsers;
    users.groups.hive-web = { };
    users.users.hive-web = {
      isSystemUser = true;
      group = "hive-web";
    };
    systemd.services.hive-core = {
      description = "hyperhive root daemon";
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/hive-core run --config ${coreConfig}";
        StateDirectory = "hyperhive";
        StateDirectoryMode = "0700";
        RuntimeDirectory = "hyperhive";
        RuntimeDirectoryMode = "0751";
        Restart = "on-failure";
      };
    };
  };
}
