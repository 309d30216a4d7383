# `services.hyperhive`: the whole install of a hive on a NixOS host.
#
# Owns: the typed options, the daemon's TOML config generated from them
# (`settings`, rendered with `pkgs.formats.toml` using exactly the key names
# of hive-core's config parser), `hive-core.service` (root: it must be),
# `hive-web.service` (its own user, hardened), the tailscale serve oneshot,
# users and groups, tmpfiles for the paths of DESIGN §2, and `hivectl` on
# the system path.
#
# Must never: put a secret in the Nix store (the tokens file is a path read
# by systemd's LoadCredential at start), let the gateway listen on a
# wildcard address without the explicit opt-in, or grant hive-web anything
# it does not need (the tests rate its unit with systemd-analyze).
#
# The plain module has no default package; the flake's
# `nixosModules.default` sets it to the flake's own build.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;
  cfg = config.services.hyperhive;
  toml = pkgs.formats.toml { };

  runtimeDir = "/run/hyperhive";

  # DESIGN §1.5: `[a-z][a-z0-9-]{0,30}`, and not a word the protocols use.
  agentNamePattern = "[a-z][a-z0-9-]{0,30}";
  reservedNames = [ "operator" "hive" "all" ];
  badAgentNames = lib.filter
    (n: builtins.match agentNamePattern n == null || lib.elem n reservedNames)
    (lib.attrNames cfg.agents);

  wildcardAddresses = [ "0.0.0.0" "::" "[::]" "" ];
  listenIsWildcard = lib.elem cfg.web.listenAddress wildcardAddresses;
  listenIsLoopback =
    cfg.web.listenAddress == "::1" || lib.hasPrefix "127." cfg.web.listenAddress;
  bareListen = lib.removeSuffix "]" (lib.removePrefix "[" cfg.web.listenAddress);
  listenHostPort =
    if lib.hasInfix ":" bareListen
    then "[${bareListen}]:${toString cfg.web.port}"
    else "${bareListen}:${toString cfg.web.port}";
  # Where tailscale serve forwards to: the gateway itself, on loopback when
  # it listens on a wildcard.
  serveTarget =
    if listenIsWildcard then "http://127.0.0.1:${toString cfg.web.port}"
    else "http://${listenHostPort}";

  missingAdminUsers = lib.filter (u: !(config.users.users ? ${u})) cfg.adminUsers;

  # One `[agents.<name>]` table with the contract's key names. A key whose
  # option is at its default is left out, so the core's defaults stay the
  # core's and an agent that sets nothing is a bare table.
  agentTable = _name: a:
    let
      limits = lib.filterAttrs (_: v: v != null) { inherit (a.limits) memory cpu; };
    in
    lib.optionalAttrs (a.command != null) { inherit (a) command; }
    // lib.optionalAttrs (a.env != { }) { inherit (a) env; }
    // lib.optionalAttrs a.manager { manager = true; }
    // lib.optionalAttrs (a.canProposeFor != [ ]) { can_propose_for = a.canProposeFor; }
    // { allowed_recipients = a.allowedRecipients; }
    // lib.optionalAttrs (a.idleTimeout != 0) { idle_timeout = a.idleTimeout; }
    // lib.optionalAttrs (a.restart != "on-failure") { inherit (a) restart; }
    // lib.optionalAttrs (limits != { }) { inherit limits; }
    // lib.optionalAttrs (a.egress != "allow") { inherit (a) egress; }
    // lib.optionalAttrs (a.allowHosts != [ ]) { allow_hosts = a.allowHosts; };

  # The settings generated from the typed options. `settings` is a public
  # option: anything assigned there (e.g. `event_retention`) wins over these.
  generatedSettings = {
    state_dir = cfg.stateDir;
    runtime_dir = runtimeDir;
    admin_group = "hive-admin";
    web_user = "hive-web";
    runtime = cfg.runtime;
    stop_timeout = cfg.stopTimeout;
    agents = lib.mapAttrs agentTable cfg.agents;
  } // lib.optionalAttrs cfg.allowUnsandboxed { allow_unsandboxed = true; }
  // lib.optionalAttrs (networkTable != { }) { network = networkTable; };
  networkTable = lib.filterAttrs (_: v: v != null) {
    pool4 = cfg.network.pool4;
    pool6 = cfg.network.pool6;
    resolver = cfg.network.resolver;
    uplink = cfg.network.uplink;
  };

  coreConfigFile = toml.generate "hive-core.toml" cfg.settings;

  # Only `hivectl` goes on the system path: the daemons are started by
  # their units, and `hive-agent` belongs inside containers.
  hivectl = pkgs.runCommandLocal "hivectl-${cfg.package.version or "0"}" { } ''
    mkdir -p $out/bin
    ln -s ${cfg.package}/bin/hivectl $out/bin/hivectl
  '';

  webArgs = [
    "${cfg.package}/bin/hive-web"
    "--core-socket" "${runtimeDir}/web.sock"
    "--listen" listenHostPort
    # %d is the unit's credentials directory: LoadCredential copies the
    # tokens file there, readable by this unit's user only.
    "--tokens-file" "%d/operator-tokens"
  ]
  ++ lib.optional cfg.web.allowWildcard "--allow-wildcard-bind"
  ++ lib.optionals (cfg.web.publicHosts != [ ]) [
    "--public-host"
    (lib.concatStringsSep "," cfg.web.publicHosts)
  ]
  ++ lib.optionals trustsTailscale [
    "--trust-tailscale-identity"
    (lib.concatStringsSep "," cfg.web.tailscale.allowedLogins)
  ]
  ++ lib.optionals (trustsTailscale && cfg.web.tailscale.daemonUid != 0) [
    "--tailscale-uid"
    (toString cfg.web.tailscale.daemonUid)
  ];
  trustsTailscale = cfg.web.tailscale.allowedLogins != [ ];

  agentOptions = { name, ... }: {
    options = {
      command = mkOption {
        type = types.nullOr (types.nonEmptyListOf types.str);
        default = null;
        example = [ "hive-agent" "run" "--" "claude" "-p" ];
        description = "The argv run inside the agent's container (`command`).";
      };
      env = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = { MODEL = "opus"; };
        description = ''
          Extra environment for `command` (`env`). Never secrets: this ends
          up in the world-readable Nix store. Names starting with `HIVE_` are
          the runtime's.
        '';
      };
      manager = mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = "Whether ${name} receives crash and lifecycle events of the other agents (`manager`).";
      };
      canProposeFor = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "bob" ];
        description = "Other agents ${name} may propose configuration for; itself always (`can_propose_for`).";
      };
      allowedRecipients = mkOption {
        type = types.listOf types.str;
        default = [ "*" ];
        example = [ "bob" "operator" ];
        description = "Whom ${name} may message: agent names, `operator`, or `*` for everyone (`allowed_recipients`).";
      };
      autoStart = mkOption {
        type = types.bool;
        default = true;
        example = false;
        description = ''
          Whether the core starts ${name} when it starts. Today every agent
          of a runtime that starts agents is started; the per-agent switch
          awaits its key in the core (see TODO-ops.md), so `false` is
          refused by an assertion rather than silently ignored.
        '';
      };
      egress = mkOption {
        type = types.enum [ "allow" "deny" ];
        default = "allow";
        example = "deny";
        description = ''
          Whether ${name} may open connections to the internet (`egress`).
          Private ranges and the host are dropped either way, except
          `allowHosts`.
        '';
      };
      allowHosts = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "203.0.113.7" "198.51.100.0/24" ];
        description = "Addresses or networks exempt from the private-range drop (`allow_hosts`).";
      };
      idleTimeout = mkOption {
        type = types.ints.unsigned;
        default = 0;
        example = 1800;
        description = "Seconds without socket traffic before ${name} is stopped as idle; 0 never (`idle_timeout`).";
      };
      restart = mkOption {
        type = types.enum [ "on-failure" "never" ];
        default = "on-failure";
        example = "never";
        description = "What happens when ${name}'s container exits on its own (`restart`).";
      };
      limits = {
        memory = mkOption {
          type = types.nullOr (types.strMatching "[0-9]+[KMG]?");
          default = null;
          example = "512M";
          description = "Memory limit of ${name}'s cgroup: bytes, or a number with K, M or G (`limits.memory`).";
        };
        cpu = mkOption {
          type = types.nullOr (types.either types.float types.ints.positive);
          default = null;
          example = 1.5;
          description = "CPU limit of ${name} in cores, fractions allowed (`limits.cpu`).";
        };
      };
      config = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = literalExpression "./agents/${name}.nix";
        description = ''
          The agent's `agent.nix`: the NixOS configuration of its container,
          seeded into the config repo as `agents/${name}/agent.nix` (the
          seeding awaits the config-repo issue; see TODO-ops.md).
        '';
      };
    };
  };
in
{
  options.services.hyperhive = {
    enable = mkEnableOption "the hyperhive agent host (hive-core, hive-web, hivectl)";

    package = mkOption {
      type = types.package;
      example = literalExpression "inputs.hyperhive.packages.\${pkgs.system}.default";
      description = ''
        The hyperhive package: hive-core, hive-web, hivectl and hive-agent.
        The flake's `nixosModules.default` sets this to its own build.
      '';
    };

    stateDir = mkOption {
      type = types.path;
      default = "/var/lib/hyperhive";
      example = "/srv/hyperhive";
      description = "The store (hive.db), the config repo and every agent's state; mode 0700 root.";
    };

    runtime = mkOption {
      type = types.enum [ "nixos-container" "nspawn" "process" "detached" ];
      default = "nixos-container";
      example = "nspawn";
      description = ''
        How the core runs agents: `nixos-container` (each agent's
        `agent.nix` as a declarative-style container), `nspawn` (a
        systemd-nspawn root of the host's store), `process` (unsandboxed
        children, development only) or `detached` (nothing is started).
      '';
    };

    allowUnsandboxed = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Let the `process` runtime run agents without bubblewrap when it is
        missing or broken (`allow_unsandboxed`; every page then says so).
        Development only.
      '';
    };

    stopTimeout = mkOption {
      type = types.ints.positive;
      default = 10;
      example = 30;
      description = "Seconds an agent gets to stop before it is killed (`stop_timeout`).";
    };

    agents = mkOption {
      type = types.attrsOf (types.submodule agentOptions);
      default = { };
      example = literalExpression ''
        {
          alice = { manager = true; canProposeFor = [ "bob" ]; config = ./agents/alice.nix; };
          bob = { allowedRecipients = [ "alice" "operator" ]; egress = "deny"; };
        }
      '';
      description = "The agents of the hive, by name (`[a-z][a-z0-9-]{0,30}`).";
    };

    adminUsers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "alice" ];
      description = "Users made members of `hive-admin`: they may use `hivectl` on admin.sock. Each must be declared in `users.users`.";
    };

    network = {
      pool4 = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10.213.0.0/16";
        description = "IPv4 pool the agents' veth addresses come from (`[network] pool4`); null keeps the core's default.";
      };
      pool6 = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "fd68:6976:6500::/48";
        description = "IPv6 pool of the agents' addresses (`[network] pool6`); null keeps the core's default.";
      };
      resolver = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "192.0.2.53";
        description = "The DNS resolver agents are given (`[network] resolver`); null keeps the core's default.";
      };
      uplink = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "eth0";
        description = "The interface agent egress leaves through, masqueraded (`[network] uplink`); null: any interface that is not an agent's.";
      };
    };

    web = {
      listenAddress = mkOption {
        type = types.str;
        default = "127.0.0.1";
        example = "100.101.102.103";
        description = ''
          Address hive-web serves the dashboard on. Loopback by default;
          `tailscale serve` reaches it there. A wildcard (`0.0.0.0`, `::`)
          needs `web.allowWildcard`.
        '';
      };
      port = mkOption {
        type = types.port;
        default = 8080;
        example = 8443;
        description = "TCP port of the dashboard.";
      };
      allowWildcard = mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = "Allow a wildcard `listenAddress` (passes `--allow-wildcard-bind`; the gateway logs a warning).";
      };
      publicHosts = mkOption {
        type = types.listOf (types.strMatching "[A-Za-z0-9.:-]+");
        default = [ ];
        example = [ "hive.example-tailnet.ts.net" ];
        description = ''
          Host names the dashboard is reached by besides the listen address
          and localhost (`--public-host`); a request naming any other Host
          gets 421. With `tailscale.serve`, this machine's tailnet name.
        '';
      };
      allowedClients = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "100.64.0.0/10" "fd7a:115c:a1e0::/48" ];
        description = ''
          Peer addresses hive-web may talk to besides loopback
          (`IPAddressAllow=`; everything else is `IPAddressDeny=any`). Needed
          only when `listenAddress` is not loopback, e.g. the tailnet ranges
          for a tailnet bind.
        '';
      };
      operatorTokensFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/secrets/hyperhive-operator-tokens";
        description = ''
          File of operator tokens (`LOGIN:TOKEN` or `TOKEN` per line). A path
          outside the Nix store, read by systemd at start through
          `LoadCredential=`; never a string in the store. Required: hive-web
          does not start without it (a tailnet-only operator still needs the
          file, which may then hold only comments).
        '';
      };
      tailscale = {
        serve = mkOption {
          type = types.bool;
          default = false;
          example = true;
          description = ''
            Run `tailscale serve` (a oneshot after tailscaled) so the tailnet
            reaches the dashboard over HTTPS at this machine's tailnet name.
            Needs `services.tailscale.enable`.
          '';
        };
        httpsPort = mkOption {
          type = types.port;
          default = 443;
          example = 8443;
          description = "Tailnet HTTPS port `tailscale serve` listens on.";
        };
        daemonUid = mkOption {
          type = types.ints.unsigned;
          default = 0;
          example = 990;
          description = ''
            The uid tailscaled runs as (`--tailscale-uid`; root on NixOS): a
            `Tailscale-User-Login` header is believed only on a connection
            the kernel says this uid opened.
          '';
        };
        allowedLogins = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "alice@example.com" ];
          description = ''
            Tailscale logins accepted as the operator without a token, from
            the `Tailscale-User-Login` header `tailscale serve` adds on
            loopback (`--trust-tailscale-identity`). Needs `tailscale.serve`.
          '';
        };
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = "Open `web.port` in the firewall (only useful with a non-loopback `listenAddress`).";
    };

    settings = mkOption {
      type = toml.type;
      default = { };
      example = { event_retention = 200000; };
      description = ''
        The daemon's TOML config (docs/config.md), generated from the options
        above; set keys here to add what has no option (e.g.
        `event_retention`). Unknown keys stop the daemon with one line.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = !listenIsWildcard || cfg.web.allowWildcard;
        message = "services.hyperhive.web.listenAddress = \"${cfg.web.listenAddress}\" listens on every interface; set services.hyperhive.web.allowWildcard = true to mean it, or use 127.0.0.1 with web.tailscale.serve.";
      }
      {
        assertion = missingAdminUsers == [ ];
        message = "services.hyperhive.adminUsers names ${lib.concatStringsSep ", " missingAdminUsers}, not declared in users.users.";
      }
      {
        assertion = cfg.web.tailscale.allowedLogins == [ ] || cfg.web.tailscale.serve;
        message = "services.hyperhive.web.tailscale.allowedLogins is set but web.tailscale.serve is false: the Tailscale-User-Login header is only believed from tailscale serve on loopback.";
      }
      {
        assertion = badAgentNames == [ ];
        message = "services.hyperhive.agents: ${lib.concatStringsSep ", " (map (n: "\"${n}\"") badAgentNames)} is not an agent name ([a-z][a-z0-9-]{0,30}, not operator, hive or all).";
      }
      {
        assertion = cfg.web.operatorTokensFile != null;
        message = "services.hyperhive.web.operatorTokensFile must name the operator tokens file (a path outside the Nix store, read through LoadCredential).";
      }
      {
        assertion = cfg.web.operatorTokensFile == null
          || !(lib.hasPrefix builtins.storeDir (toString cfg.web.operatorTokensFile));
        message = "services.hyperhive.web.operatorTokensFile is in the Nix store, which every user can read; give a path outside it (e.g. /run/secrets/...).";
      }
      {
        assertion = !cfg.web.tailscale.serve || cfg.web.publicHosts != [ ];
        message = "services.hyperhive.web.tailscale.serve needs services.hyperhive.web.publicHosts = [ \"<host>.<tailnet>.ts.net\" ]: the gateway answers 421 to a Host it was not told.";
      }
      {
        assertion = !cfg.web.tailscale.serve || (config.services.tailscale.enable or false);
        message = "services.hyperhive.web.tailscale.serve needs services.tailscale.enable = true.";
      }
      {
        assertion = lib.all (a: a.autoStart) (lib.attrValues cfg.agents);
        message = "services.hyperhive.agents.<name>.autoStart = false is not supported by this hive-core yet (every agent starts with the core); see TODO-ops.md.";
      }
    ];

    warnings = lib.optional (!listenIsLoopback && !listenIsWildcard && cfg.web.allowedClients == [ ])
      "services.hyperhive.web.listenAddress ${cfg.web.listenAddress} is not loopback but web.allowedClients is empty: IPAddressDeny=any leaves only loopback peers able to reach hive-web.";

    # Defaults at the leaves, so `settings.network.pool4 = ...` replaces one
    # key and not the whole table.
    services.hyperhive.settings = lib.mapAttrsRecursive (_: lib.mkDefault) generatedSettings;

    users.groups.hive-admin.members = cfg.adminUsers;
    users.groups.hive-web = { };
    users.users.hive-web = {
      isSystemUser = true;
      group = "hive-web";
      description = "hyperhive gateway (hive-web)";
    };

    # DESIGN §2: the modes the core also enforces at start (daemon.rs).
    systemd.tmpfiles.rules = [
      "d ${runtimeDir} 0751 root root - -"
      "d ${runtimeDir}/agents 0700 root root - -"
      "d ${cfg.stateDir} 0700 root root - -"
      "d ${cfg.stateDir}/agents 0700 root root - -"
    ];

    environment.systemPackages = [ hivectl ];

    networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall cfg.web.port;

    systemd.services.hive-core = {
      description = "hyperhive root daemon (store, sockets, containers)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      restartTriggers = [ coreConfigFile ];
      # What the core runs by name: bwrap (the process runtime's sandbox),
      # nft, ip and nsenter (the network isolation). systemd-nspawn comes
      # with the unit's default path (systemd).
      path = [ pkgs.bubblewrap pkgs.nftables pkgs.iproute2 pkgs.util-linux ];
      # hive-core is root on purpose: it creates containers, network
      # namespaces, nftables rules and cgroups, and binds the sockets others
      # reach. Its unit keeps what a container manager needs; see
      # docs/deploy.md for its systemd-analyze figure and why.
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/hive-core run --config ${coreConfigFile}";
        Restart = "on-failure";
        RestartSec = "2s";
        # Agents' containers live below this unit's cgroup; the core sets
        # their limits itself, which cgroup v2 allows only in a delegated
        # subtree.
        Delegate = "yes";
        # nspawn containers are processes in this unit's cgroup and must
        # outlive a restart of the core, which adopts them: `mixed` would
        # SIGKILL them once the core exits. nixos-container's containers
        # are units of their own; process agents are stopped by the core.
        KillMode = if cfg.runtime == "nspawn" then "process" else "mixed";
        TimeoutStopSec = cfg.stopTimeout + 20;
        LimitNOFILE = 65536;
      };
    };

    systemd.services.hive-web = {
      description = "hyperhive gateway (operator dashboard)";
      wantedBy = [ "multi-user.target" ];
      after = [ "hive-core.service" "network.target" ];
      requires = [ "hive-core.service" ];
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = lib.concatStringsSep " " webArgs;
        User = "hive-web";
        Group = "hive-web";
        LoadCredential = [ "operator-tokens:${toString cfg.web.operatorTokensFile}" ];
        Restart = "on-failure";
        RestartSec = "2s";

        NoNewPrivileges = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        PrivateUsers = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        DevicePolicy = "closed";
        PrivateIPC = true;
        PrivateMounts = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        # AF_NETLINK only to ask the kernel (sock_diag) which uid opened a
        # connection that carries a Tailscale-User-Login header.
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ]
          ++ lib.optional trustsTailscale "AF_NETLINK";
        RestrictNamespaces = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RemoveIPC = true;
        KeyringMode = "private";
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
        SystemCallErrorNumber = "EPERM";
        UMask = "0077";
        IPAddressDeny = "any";
        IPAddressAllow = [ "localhost" ]
          ++ lib.optional (!listenIsWildcard && !listenIsLoopback) bareListen
          ++ cfg.web.allowedClients;
      };
    };

    systemd.services.hyperhive-tailscale-serve = mkIf cfg.web.tailscale.serve {
      description = "tailscale serve: the tailnet's HTTPS to hive-web";
      wantedBy = [ "multi-user.target" ];
      after = [ "tailscaled.service" "hive-web.service" ];
      wants = [ "tailscaled.service" ];
      bindsTo = [ "hive-web.service" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${config.services.tailscale.package}/bin/tailscale serve --bg --https=${toString cfg.web.tailscale.httpsPort} ${serveTarget}";
        ExecStop = "${config.services.tailscale.package}/bin/tailscale serve --https=${toString cfg.web.tailscale.httpsPort} off";
      };
    };
  };
}
