# Evaluates flake.nix's `outputs` with a stubbed `nixpkgs` input (the real
# nixpkgs `lib`, stand-ins for the few package functions the flake calls)
# and returns { outputs = { "<path>" = "<what it is>"; }; checks = [...]; }:
# every output the flake promises, forced far enough to show what it is,
# and flake.lock's nixpkgs node against the pin in ../shared/FACTS.md.
{ lib }:
let
  flake = import ../../flake.nix;
  lock = builtins.fromJSON (builtins.readFile ../../flake.lock);

  fakeDrv = kind: args: {
    type = "derivation";
    name = args.name or (if args ? pname then "${args.pname}-${args.version}" else kind);
    outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" (builtins.toJSON kind))}-stub";
    inherit kind;
    drvArgs = args;
  };
  stubPkgs = system: {
    inherit lib;
    stdenv.hostPlatform.system = system;
    rustPlatform.buildRustPackage = fakeDrv "buildRustPackage";
    mkShell = fakeDrv "mkShell";
    runCommand = name: env: script: fakeDrv "runCommand" { inherit name env script; };
    testers.runNixOSTest = t: fakeDrv "runNixOSTest" t;
    nixfmt-rfc-style = fakeDrv "nixfmt" { name = "nixfmt-rfc-style"; };
    systemd = fakeDrv "systemd" { name = "systemd"; };
  } // lib.genAttrs [ "cargo" "rustc" "clippy" "rustfmt" "sqlite" "nftables" "bubblewrap" "iproute2" "chromium" "chromedriver" "nix" "pkg-config" "zlib" ]
    (n: fakeDrv n { name = n; });
  nixpkgs = {
    lib = lib // { nixosSystem = _: throw "nixosSystem is not evaluated here"; };
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] stubPkgs;
  };
  self = outputs // { outPath = ../..; };
  outputs = flake.outputs { inherit self nixpkgs; };

  describe = v:
    if lib.isDerivation v then "derivation ${v.kind} ${v.name}"
    else if builtins.isFunction v then "function"
    else if builtins.isAttrs v && v ? imports then "module"
    else builtins.typeOf v;
  perSystem = name: lib.concatMap
    (system: lib.mapAttrsToList
      (attr: v: lib.nameValuePair "${name}.${system}.${attr}" (describe v))
      outputs.${name}.${system})
    (lib.attrNames outputs.${name});
  listed = lib.listToAttrs (
    perSystem "packages" ++ perSystem "devShells" ++ perSystem "checks"
    ++ lib.mapAttrsToList (s: v: lib.nameValuePair "formatter.${s}" (describe v)) outputs.formatter
    ++ lib.mapAttrsToList (m: v: lib.nameValuePair "nixosModules.${m}" (describe v)) outputs.nixosModules
  );

  pkg = outputs.packages.x86_64-linux.default;
  # The flake's module on the stub declarations: its default package is the
  # flake's own build.
  viaFlake = lib.evalModules {
    modules = [
      ./stubs.nix
      outputs.nixosModules.default
      { _module.args.pkgs = import ./stub-pkgs.nix { inherit lib; } // { stdenv.hostPlatform.system = "x86_64-linux"; }; }
      {
        services.hyperhive.enable = true;
        services.hyperhive.web.operatorTokensFile = "/run/secrets/t";
      }
    ];
  };
  check = name: ok: detail: { inherit name ok; detail = if ok then "" else detail; };
  eq = name: got: want: check name (got == want) "got ${builtins.toJSON got}, want ${builtins.toJSON want}";
  pinned = {
    type = "github";
    owner = "NixOS";
    repo = "nixpkgs";
    rev = "8fd9daa3db09ced9700431c5b7ad0e8ba199b575";
    narHash = "sha256-Ti+ZBvW6yrWWAg2szExVTwCd4qOJ3KlVr1tFHfyfi8Q=";
    lastModified = 1778430510;
  };
in
{
  outputs = listed;
  checks = [
    (eq "flake.nix has one input, nixpkgs" (lib.attrNames flake.inputs) [ "nixpkgs" ])
    (eq "the input follows nixos-25.11" flake.inputs.nixpkgs.url "github:NixOS/nixpkgs/nixos-25.11")
    (eq "flake.lock's nixpkgs node is the pinned one" lock.nodes.nixpkgs.locked pinned)
    (eq "flake.lock's nixpkgs node names its branch" lock.nodes.nixpkgs.original
      { type = "github"; owner = "NixOS"; repo = "nixpkgs"; ref = "nixos-25.11"; })
    (eq "flake.lock's root has only nixpkgs" lock.nodes.root.inputs { nixpkgs = "nixpkgs"; })
    (eq "flake.lock is version 7" lock.version 7)
    (eq "every promised output is there" (lib.attrNames listed) [
      "checks.aarch64-linux.eval" "checks.aarch64-linux.vm"
      "checks.x86_64-linux.eval" "checks.x86_64-linux.vm"
      "devShells.aarch64-linux.default" "devShells.x86_64-linux.default"
      "formatter.aarch64-linux" "formatter.x86_64-linux"
      "nixosModules.default" "nixosModules.hyperhive"
      "packages.aarch64-linux.default" "packages.x86_64-linux.default"
    ])
    (eq "the package is the workspace through buildRustPackage" pkg.kind "buildRustPackage")
    (eq "the package builds every binary of the workspace" pkg.drvArgs.cargoBuildFlags [ "--workspace" ])
    (eq "the package is locked by Cargo.lock" pkg.drvArgs.cargoLock.lockFile ../../Cargo.lock)
    (eq "the VM test is a NixOS test" outputs.checks.x86_64-linux.vm.kind "runNixOSTest")
    (eq "the VM test has the hive host" (lib.attrNames outputs.checks.x86_64-linux.vm.drvArgs.nodes) [ "host" ])
    (eq "the eval check runs systemd-analyze" outputs.checks.x86_64-linux.eval.kind "runCommand")
    (eq "the flake's module runs the flake's package"
      (lib.hasPrefix "${pkg.outPath}/bin/hive-core run --config "
        viaFlake.config.systemd.services.hive-core.serviceConfig.ExecStart)
      true)
  ];
}
