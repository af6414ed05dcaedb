{
  description = "postmaster: a self-hosted postfix + dovecot mail host that runs itself";

  # NixOS 26.05: the dovecot module with `services.dovecot2.settings` (Dovecot 2.4)
  # and the postfix module with `services.postfix.settings.main`, which
  # nix/module.nix is written against. flake.lock is made on the first run.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/package.nix { };
      });

      overlays.default = final: _prev: {
        postmaster = final.callPackage ./nix/package.nix { };
      };

      # services.postmaster; its package defaults to the one built from this flake
      # against the importing system's nixpkgs.
      nixosModules.default = ./nix/module.nix;

      # `nix flake check`: the package (with the library's unit tests) and every
      # NixOS VM test (nix/tests/default.nix says what each one proves).
      checks = forAllSystems (
        pkgs:
        {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        }
        // import ./nix/tests {
          inherit pkgs;
          module = self.nixosModules.default;
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            postfix
            dovecot
            openssl
            (python3.withPackages (ps: [ ps.pytest ]))
            swaks
            nixfmt
            deadnix
          ];
        };
      });

      # `nix fmt`: nixfmt over the whole tree (nixfmt-tree is nixfmt behind treefmt,
      # which also works when `nix fmt` passes no paths).
      formatter = forAllSystems (pkgs: pkgs.nixfmt-tree);
    };
}
