# The postmaster command and daemon, built from this repository with the
# dependencies pinned in Cargo.lock (vendored by Nix from crates.io; no network
# during the build).
{
  lib,
  rustPlatform,
}:

let
  manifest = (lib.importTOML ../supervisor/Cargo.toml).package;
in
rustPlatform.buildRustPackage {
  pname = manifest.name;
  inherit (manifest) version;

  # Only what the build reads: a change to the tests/, docs or nix/ does not
  # rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../supervisor
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [
    "--package"
    "postmaster"
  ];

  # The library's unit tests only (parsing, validation, rendering against golden
  # files, planning): they need nothing but the sandbox. The integration tests in
  # supervisor/tests run the real postmap, postconf, doveconf and doveadm, and fail
  # (on purpose, never skip) when one is missing or lacks a feature: nixpkgs'
  # postfix has no lmdb maps, and postconf/doveconf want the postfix and dovecot
  # users that a build sandbox does not have. The NixOS VM tests (nix/tests) run
  # postfix and dovecot for real instead.
  cargoTestFlags = [
    "--package"
    "postmaster"
    "--lib"
  ];

  meta = {
    inherit (manifest) description;
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "postmaster";
    platforms = lib.platforms.linux;
  };
}
