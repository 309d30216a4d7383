{
  description = "hyperhive: a hive of AI agents on one NixOS host, each in its own container, steered by one operator";

  # One input. The pin is in flake.lock (see docs/deploy.md for why it was
  # written by hand rather than by `nix flake lock`).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      # The module as operators import it: the plain module plus this
      # flake's package as the default `services.hyperhive.package`.
      module = { lib, pkgs, ... }: {
        imports = [ ./nixos-modules/hyperhive.nix ];
        services.hyperhive.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };
    in
    {
      packages = forAll (_system: pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "hyperhive";
          version = "0.1.0";
          src = lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # Every binary of the workspace: hive-core, hive-web, hivectl,
          # hive-agent.
          cargoBuildFlags = [ "--workspace" ];
          # libgit2 (the config repo) and SQLite are built vendored by their
          # crates with the C compiler; pkg-config lets libz-sys use zlib.
          nativeBuildInputs = [ pkgs.pkg-config ];
          buildInputs = [ pkgs.zlib ];
          # The integration tests need root, chromium and network
          # namespaces; they run in scripts/test-all.sh and the VM test, not
          # in the sandboxed package build.
          doCheck = false;
          meta = {
            description = "hyperhive host orchestrator (hive-core, hive-web, hivectl, hive-agent)";
            license = lib.licenses.asl20;
            platforms = lib.platforms.linux;
            mainProgram = "hivectl";
          };
        };
      });

      nixosModules.default = module;
      nixosModules.hyperhive = module;

      devShells = forAll (_system: pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo rustc clippy rustfmt
            sqlite nftables bubblewrap iproute2 chromium chromedriver
            nix systemd
          ];
        };
      });

      formatter = forAll (_system: pkgs: pkgs.nixfmt-rfc-style);

      checks = forAll (system: pkgs: {
        # The NixOS VM test: two agents on the nixos-container runtime.
        # Needs KVM; see docs/deploy.md for where it has (not) run.
        vm = import ./nixos-modules/tests/vm.nix { inherit pkgs module; };
        # The evaluation tests against the real NixOS module system (not the
        # stub declarations the Debian test uses) and the systemd-analyze
        # rating of the units NixOS itself renders.
        eval = import ./nixos-modules/tests/flake-check.nix {
          inherit pkgs lib module;
          nixosSystem = args: lib.nixosSystem (args // { inherit system; });
        };
      });
    };
}
