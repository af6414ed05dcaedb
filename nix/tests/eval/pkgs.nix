# A stand-in for nixpkgs' package set: what services.postmaster, its VM tests'
# nodes and nixpkgs' mail modules take from pkgs, as fake derivations that carry
# their text (writeText, writeShellScript) or value (formats.toml) for the checks
# in nix/tests/module-eval.nix to read.
{ lib }:

let
  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };
  fakePackage =
    name: version: extra:
    fakeDrv "${name}-${version}"
    // {
      inherit version;
      pname = name;
      meta.mainProgram = name;
    }
    // extra;
  dovecotPassthru = {
    passthru.dovecot_pigeonhole = fakeDrv "dovecot-pigeonhole";
  };
in
rec {
  inherit fakeDrv;
  inherit lib;
  path = "/nixpkgs";
  formats.toml = _: {
    type = lib.types.attrsOf lib.types.anything;
    # The value itself rides along, for the checks to read.
    generate = name: value: fakeDrv name // { inherit value; };
  };
  writeText = name: text: fakeDrv name // { inherit text; };
  writeShellScript = name: text: fakeDrv name // { inherit text; };
  writeShellScriptBin = name: text: fakeDrv name // { inherit text; };
  writeTextDir = path: text: fakeDrv (baseNameOf path) // { inherit text; };
  # The entries ride along (rspamd's /etc/rspamd: its local.d files, rspamd.conf).
  linkFarm = name: entries: fakeDrv name // { inherit entries; };
  runCommand =
    name: _: _:
    fakeDrv name;
  callPackage = _: _: fakeDrv "postmaster";
  python3.withPackages = _: fakeDrv "python3";
  # nixpkgs' versions as of NixOS 26.05 (the patch levels do not matter here).
  postfix = fakePackage "postfix" "3.10.4" { };
  dovecot = fakePackage "dovecot" "2.4.1" dovecotPassthru;
  dovecot_2_3 = fakePackage "dovecot" "2.3.21.1" dovecotPassthru;
  # (its version does not matter here)
  rspamd = fakePackage "rspamd" "3.12.1" { };
  unbound-with-systemd = fakePackage "unbound" "1.24.2" { };
  redis = fakePackage "redis" "8.2.1" { };
  coreutils = fakeDrv "coreutils";
  openssl = fakeDrv "openssl";
  openssh = fakeDrv "openssh";
  jq = fakeDrv "jq";
  curl = fakeDrv "curl";
}
