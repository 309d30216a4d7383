{
  description = "hyperhive: a hive of AI agents on one NixOS host, each in its own container, steered by one operator";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "hyperhive";
          version = "0.1.0";
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # The integration tests need root, chromium and network namespaces;
          # they run in `checks` and in .ci/run, not in the package build.
          doCheck = false;
          meta = {
            description = "hyperhive host orchestrator (hive-core, hive-web, hivectl, hive-agent)";
            license = pkgs.lib.licenses.asl20;
            mainProgram = "hivectl";
          };
        };
      });

      nixosModules.default = import ./nixos-modules/hyperhive.nix { inherit self; };

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt sqlite nftables bubblewrap chromium chromedriver ];
        };
      });
    };
}
