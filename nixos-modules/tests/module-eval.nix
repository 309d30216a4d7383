# The module's evaluation tests: a minimal and a full configuration, and one
# bad configuration per assertion. Returns
#   checks  : [ { name; ok; detail; } ]  every expectation, named for what it proves
#   files   : { "<case>/<file>" = text; } the rendered units and TOML configs
#   configs : { <case> = { stripped; probes = [ { key; awaits; toml; } ]; }; }
# for module-eval.sh, which prints the checks, rates the units with
# systemd-analyze and hands the configs to `hive-core check-config`.
{ lib }:
let
  stubPkgs = import ./stub-pkgs.nix { inherit lib; };
  pending = import ./pending.nix;
  evalWith = configuration: import ./eval.nix { inherit lib configuration; };

  base = {
    services.hyperhive = {
      enable = true;
      package = stubPkgs.hyperhive;
      web.operatorTokensFile = "/run/secrets/hyperhive-operator-tokens";
    };
  };
  withBase = extra: { imports = [ base extra ]; };

  pkgBin = "${stubPkgs.hyperhive}/bin";

  minimal = evalWith base;
  full = evalWith (withBase {
    users.users.alice.isNormalUser = true;
    services.tailscale = { enable = true; package = stubPkgs.tailscale; };
    services.hyperhive = {
      runtime = "nspawn";
      allowUnsandboxed = true;
      stopTimeout = 30;
      adminUsers = [ "alice" ];
      network = { pool4 = "10.213.0.0/16"; pool6 = "fd68:6976:6500::/48"; resolver = "192.0.2.53"; uplink = "eth0"; };
      web = {
        port = 8443;
        publicHosts = [ "hive.example-tailnet.ts.net" ];
        tailscale = { serve = true; daemonUid = 990; allowedLogins = [ "alice@example.com" "bob@example.com" ]; };
      };
      openFirewall = true;
      settings.event_retention = 200000;
      agents.alice = {
        manager = true;
        canProposeFor = [ "bob" ];
        command = [ "hive-agent" "run" "--" "claude" "-p" ];
        env.MODEL = "opus";
        idleTimeout = 1800;
        restart = "never";
        limits = { memory = "512M"; cpu = 1.5; };
        egress = "deny";
        allowHosts = [ "203.0.113.7" "198.51.100.0/24" ];
        config = ./stubs.nix;
      };
      agents.bob.allowedRecipients = [ "alice" "operator" ];
    };
  });
  ipv6 = evalWith (withBase { services.hyperhive.web.listenAddress = "::1"; });
  wildcardAllowed = evalWith (withBase {
    services.hyperhive.web = { listenAddress = "0.0.0.0"; allowWildcard = true; };
  });
  tailnetBind = evalWith (withBase {
    services.hyperhive.web = { listenAddress = "100.101.102.103"; allowedClients = [ "100.64.0.0/10" ]; };
  });

  # One bad input per assertion, and the message it must produce.
  badCases = {
    wildcard-listen = {
      config.services.hyperhive.web.listenAddress = "0.0.0.0";
      message = ''services.hyperhive.web.listenAddress = "0.0.0.0" listens on every interface; set services.hyperhive.web.allowWildcard = true to mean it'';
    };
    wildcard-listen-v6 = {
      config.services.hyperhive.web.listenAddress = "::";
      message = ''services.hyperhive.web.listenAddress = "::" listens on every interface'';
    };
    admin-user-missing = {
      config.services.hyperhive.adminUsers = [ "mallory" ];
      message = "services.hyperhive.adminUsers names mallory, not declared in users.users.";
    };
    logins-without-serve = {
      config.services.hyperhive.web.tailscale.allowedLogins = [ "alice@example.com" ];
      message = "services.hyperhive.web.tailscale.allowedLogins is set but web.tailscale.serve is false";
    };
    agent-name-uppercase = {
      config.services.hyperhive.agents.Alice = { };
      message = ''services.hyperhive.agents: "Alice" is not an agent name ([a-z][a-z0-9-]{0,30}, not operator, hive or all).'';
    };
    agent-name-too-long = {
      config.services.hyperhive.agents.${lib.concatStrings (lib.replicate 32 "a")} = { };
      message = "is not an agent name";
    };
    agent-name-reserved = {
      config.services.hyperhive.agents.operator = { };
      message = ''services.hyperhive.agents: "operator" is not an agent name'';
    };
    agent-name-underscore = {
      config.services.hyperhive.agents.a_b = { };
      message = ''"a_b" is not an agent name'';
    };
    no-tokens-file = {
      config.services.hyperhive.web.operatorTokensFile = lib.mkForce null;
      message = "services.hyperhive.web.operatorTokensFile must name the operator tokens file";
    };
    tokens-file-in-store = {
      config.services.hyperhive.web.operatorTokensFile = lib.mkForce "/nix/store/aaaa-tokens";
      message = "services.hyperhive.web.operatorTokensFile is in the Nix store";
    };
    serve-without-public-host = {
      config.services.tailscale = { enable = true; package = stubPkgs.tailscale; };
      config.services.hyperhive.web.tailscale.serve = true;
      message = "services.hyperhive.web.tailscale.serve needs services.hyperhive.web.publicHosts";
    };
    serve-without-tailscale = {
      config.services.hyperhive.web = { tailscale.serve = true; publicHosts = [ "h.example.ts.net" ]; };
      message = "services.hyperhive.web.tailscale.serve needs services.tailscale.enable = true.";
    };
    autostart-off = {
      config.services.hyperhive.agents.alice.autoStart = false;
      message = "autoStart = false is not supported";
    };
  };

  check = name: ok: detail: { inherit name ok; detail = if ok then "" else detail; };
  eq = name: got: want: check name (got == want)
    "got ${builtins.toJSON got}, want ${builtins.toJSON want}";
  has = name: haystack: needle: check name (lib.hasInfix needle haystack)
    "${builtins.toJSON needle} not in ${builtins.toJSON haystack}";

  web = r: r.services.hive-web.serviceConfig;
  core = r: r.services.hive-core.serviceConfig;

  # Every hardening key issue 12 lists, with the value it must have.
  hardening = {
    User = "hive-web";
    Group = "hive-web";
    NoNewPrivileges = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictNamespaces = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
    UMask = "0077";
    IPAddressDeny = "any";
    Type = "notify";
  };

  unitChecks = caseName: r: [
    (eq "${caseName}: hive-core runs as root (no User=)" ((core r) ? User) false)
    (eq "${caseName}: hive-core is Type=notify" (core r).Type "notify")
    (eq "${caseName}: hive-core ExecStart runs the generated config"
      (core r).ExecStart "${pkgBin}/hive-core run --config ${r.configFile.outPath}")
    (eq "${caseName}: hive-core restarts on failure" (core r).Restart "on-failure")
    (eq "${caseName}: hive-core restarts when its config changes"
      (map toString r.services.hive-core.restartTriggers) [ r.configFile.outPath ])
    (eq "${caseName}: hive-core finds bwrap, nft, ip and nsenter on its PATH"
      (map (p: p.name) r.services.hive-core.path) [ "bubblewrap-0.11.0" "nftables-1.1.5" "iproute2-6.17.0" "util-linux-2.41.2" ])
    (eq "${caseName}: hive-core is wanted by multi-user.target" r.services.hive-core.wantedBy [ "multi-user.target" ])
    (eq "${caseName}: hive-web comes after the core" r.services.hive-web.after [ "hive-core.service" "network.target" ])
    (eq "${caseName}: hive-web requires the core" r.services.hive-web.requires [ "hive-core.service" ])
    (eq "${caseName}: hive-web restarts on failure" (web r).Restart "on-failure")
    (eq "${caseName}: hive-web gets the tokens through LoadCredential"
      (web r).LoadCredential [ "operator-tokens:/run/secrets/hyperhive-operator-tokens" ])
    (has "${caseName}: hive-web reads the tokens from its credentials directory"
      (web r).ExecStart "--tokens-file %d/operator-tokens")
    (has "${caseName}: hive-web talks to web.sock" (web r).ExecStart
      "${pkgBin}/hive-web --core-socket /run/hyperhive/web.sock ")
    (eq "${caseName}: no secret in the unit's environment" r.services.hive-web.environment { })
  ] ++ lib.mapAttrsToList
    (k: v: eq "${caseName}: hive-web ${k}=${builtins.toJSON v}" ((web r).${k} or null) v)
    hardening;

  commonChecks = caseName: r: [
    (eq "${caseName}: tmpfiles make the DESIGN §2 directories and modes" r.tmpfiles [
      "d /run/hyperhive 0751 root root - -"
      "d /run/hyperhive/agents 0700 root root - -"
      "d /var/lib/hyperhive 0700 root root - -"
      "d /var/lib/hyperhive/agents 0700 root root - -"
    ])
    (eq "${caseName}: hive-web is a system user in its own group"
      { inherit (r.users.hive-web) isSystemUser group; } { isSystemUser = true; group = "hive-web"; })
    (eq "${caseName}: the groups hive-web and hive-admin exist"
      (lib.filter (g: lib.elem g [ "hive-web" "hive-admin" ]) (lib.attrNames r.groups)) [ "hive-admin" "hive-web" ])
    (eq "${caseName}: only hivectl goes on the system path" r.systemPackages [ "hivectl-0.1.0" ])
    (has "${caseName}: the hivectl package links the real binary"
      (lib.head r.cfg.environment.systemPackages).script "ln -s ${pkgBin}/hivectl $out/bin/hivectl")
    (eq "${caseName}: no assertion fails" r.failedAssertions [ ])
  ];

  minimalToml = ''
    admin_group = "hive-admin"
    runtime = "nixos-container"
    runtime_dir = "/run/hyperhive"
    state_dir = "/var/lib/hyperhive"
    stop_timeout = 10
    web_user = "hive-web"

    [agents]
  '';

  fullToml = ''
    admin_group = "hive-admin"
    allow_unsandboxed = true
    event_retention = 200000
    runtime = "nspawn"
    runtime_dir = "/run/hyperhive"
    state_dir = "/var/lib/hyperhive"
    stop_timeout = 30
    web_user = "hive-web"


    [agents.alice]
    allow_hosts = ["203.0.113.7", "198.51.100.0/24"]
    allowed_recipients = ["*"]
    can_propose_for = ["bob"]
    command = ["hive-agent", "run", "--", "claude", "-p"]
    egress = "deny"
    idle_timeout = 1800
    manager = true
    restart = "never"

    [agents.alice.env]
    MODEL = "opus"

    [agents.alice.limits]
    cpu = 1.5
    memory = "512M"

    [agents.bob]
    allowed_recipients = ["alice", "operator"]

    [network]
    pool4 = "10.213.0.0/16"
    pool6 = "fd68:6976:6500::/48"
    resolver = "192.0.2.53"
    uplink = "eth0"
  '';

  checks =
    unitChecks "minimal" minimal
    ++ commonChecks "minimal" minimal
    ++ unitChecks "full" full
    ++ commonChecks "full" full
    ++ [
      (eq "minimal: the generated config is exactly the defaults" minimal.configFile.text minimalToml)
      (eq "minimal: hive-web listens on loopback 8080, no wildcard, no tailscale identity"
        (web minimal).ExecStart
        "${pkgBin}/hive-web --core-socket /run/hyperhive/web.sock --listen 127.0.0.1:8080 --tokens-file %d/operator-tokens")
      (eq "minimal: hive-web may reach loopback only" (web minimal).IPAddressAllow [ "localhost" ])
      (eq "minimal: hive-web's address families are unix and IP only"
        (web minimal).RestrictAddressFamilies [ "AF_UNIX" "AF_INET" "AF_INET6" ])
      (eq "minimal: no tailscale unit without tailscale.serve" (minimal.services ? hyperhive-tailscale-serve) false)
      (eq "minimal: the firewall stays closed" minimal.firewallPorts [ ])
      (eq "minimal: hive-admin has no members" minimal.groups.hive-admin.members [ ])

      (eq "full: the generated config carries every option under its contract key" full.configFile.text fullToml)
      (eq "full: adminUsers are hive-admin's members" full.groups.hive-admin.members [ "alice" ])
      (eq "full: openFirewall opens the web port" full.firewallPorts [ 8443 ])
      (eq "full: allowedLogins reach hive-web as --trust-tailscale-identity"
        (web full).ExecStart
        "${pkgBin}/hive-web --core-socket /run/hyperhive/web.sock --listen 127.0.0.1:8443 --tokens-file %d/operator-tokens --public-host hive.example-tailnet.ts.net --trust-tailscale-identity alice@example.com,bob@example.com --tailscale-uid 990")
      (eq "full: trusting tailscale identity adds AF_NETLINK (sock_diag) and nothing else"
        (web full).RestrictAddressFamilies [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ])
      (eq "full: tailscale serve runs after tailscaled and the gateway"
        full.services.hyperhive-tailscale-serve.after [ "tailscaled.service" "hive-web.service" ])
      (eq "full: tailscale serve is bound to the gateway" full.services.hyperhive-tailscale-serve.bindsTo [ "hive-web.service" ])
      (eq "full: tailscale serve is a oneshot that stays active"
        { inherit (full.services.hyperhive-tailscale-serve.serviceConfig) Type RemainAfterExit; }
        { Type = "oneshot"; RemainAfterExit = true; })
      (eq "full: tailscale serve forwards HTTPS to the gateway on loopback"
        full.services.hyperhive-tailscale-serve.serviceConfig.ExecStart
        "${stubPkgs.tailscale}/bin/tailscale serve --bg --https=443 http://127.0.0.1:8443")
      (eq "full: stopping the tailscale unit turns the serve off"
        full.services.hyperhive-tailscale-serve.serviceConfig.ExecStop
        "${stubPkgs.tailscale}/bin/tailscale serve --https=443 off")
      (eq "full: the core gets time to stop its agents" (core full).TimeoutStopSec 50)
      (eq "full: under nspawn the containers outlive the core's stop (KillMode=process)" (core full).KillMode "process")
      (eq "minimal: under nixos-container the unit stops its own processes (KillMode=mixed)" (core minimal).KillMode "mixed")

      (has "ipv6: a v6 listen address is bracketed" (web ipv6).ExecStart "--listen [::1]:8080 ")
      (eq "ipv6: ::1 is loopback (no warning)" ipv6.warnings [ ])
      (has "wildcard: allowWildcard passes --allow-wildcard-bind" (web wildcardAllowed).ExecStart "--listen 0.0.0.0:8080 --tokens-file %d/operator-tokens --allow-wildcard-bind")
      (eq "wildcard: allowed with its opt-in" wildcardAllowed.failedAssertions [ ])
      (eq "tailnet bind: the listen address and allowedClients are let through IPAddressDeny"
        (web tailnetBind).IPAddressAllow [ "localhost" "100.101.102.103" "100.64.0.0/10" ])
      (eq "tailnet bind: no warning when allowedClients is set" tailnetBind.warnings [ ])
      (eq "tailnet bind without allowedClients warns"
        (lib.length (evalWith (withBase { services.hyperhive.web.listenAddress = "100.101.102.103"; })).warnings) 1)
    ]
    ++ lib.mapAttrsToList
      (name: c:
        let r = evalWith (withBase c.config); in
        check "assertion ${name}: fires alone, with its message"
          (lib.length r.failedAssertions == 1 && lib.hasInfix c.message (lib.head r.failedAssertions))
          "failed assertions: ${builtins.toJSON r.failedAssertions}; want one containing ${builtins.toJSON c.message}")
      badCases
    ++ [
      (check "a misspelt option is an evaluation error, not silence"
        (!(builtins.tryEval (builtins.deepSeq
          (evalWith (withBase { services.hyperhive.web.listenAdress = "0.0.0.0"; })).settings true)).success)
        "services.hyperhive.web.listenAdress was accepted")
      (check "a key set through settings wins over the generated one"
        ((evalWith (withBase { services.hyperhive.settings.runtime = "detached"; })).settings.runtime == "detached")
        "settings.runtime did not override")
    ];

  # `path` with "*" for every attribute name at that level.
  removePath = path: attrs:
    if path == [ ] || !(builtins.isAttrs attrs) then attrs
    else
      let head = lib.head path; rest = lib.tail path; in
      if rest == [ ] then removeAttrs attrs (if head == "*" then lib.attrNames attrs else [ head ])
      else if head == "*" then lib.mapAttrs (_: removePath rest) attrs
      else if attrs ? ${head} then attrs // { ${head} = removePath rest attrs.${head}; }
      else attrs;
  hasPath = path: attrs:
    if path == [ ] then true
    else if !(builtins.isAttrs attrs) then false
    else
      let head = lib.head path; rest = lib.tail path; in
      if head == "*" then lib.any (v: hasPath rest v) (lib.attrValues attrs)
      else attrs ? ${head} && hasPath rest attrs.${head};
  stripAll = entries: settings: lib.foldl' (acc: e: removePath e.path acc) settings entries;
  configsOf = r: {
    stripped = stubPkgs.toTOML (stripAll pending r.settings);
    probes = map
      (e: {
        key = lib.last (lib.filter (s: s != "*") e.path);
        inherit (e) awaits;
        toml = stubPkgs.toTOML (stripAll (lib.filter (o: o != e) pending) r.settings);
      })
      (lib.filter (e: hasPath e.path r.settings) pending);
  };

  cases = { inherit minimal full; };
in
{
  inherit checks;
  files = lib.foldl' (acc: name:
    let r = cases.${name}; in
    acc
    // lib.mapAttrs' (unit: text: lib.nameValuePair "${name}/${unit}" text) r.units
    // { "${name}/hive-core.toml" = r.configFile.text; })
    { } (lib.attrNames cases);
  configs = lib.mapAttrs (_: configsOf) cases;
}
