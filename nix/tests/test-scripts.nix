# The Python test scripts of the NixOS VM tests, without nixpkgs: each test file
# evaluated with stand-ins for what only a NixOS evaluation has (pkgs, nodes),
# with the names of its machines. The scripts need neither. tests/nix-checks.sh
# runs pyflakes and mypy over them, as the NixOS test driver does before it boots
# anything.
#
#   nix-instantiate --eval --strict --json nix/tests/test-scripts.nix
let
  # common.nix reads pkgs lazily: the test scripts use only its passwords and testLib.
  common = import ./common.nix {
    pkgs = { };
    module = null;
  };
  nodes.acme.test-support.acme.caDomain = "acme.test";
  script =
    file:
    let
      test = import file {
        inherit common;
        pkgs.path = "/nixpkgs";
      };
    in
    {
      machines = builtins.attrNames test.nodes;
      script =
        if builtins.isFunction test.testScript then test.testScript { inherit nodes; } else test.testScript;
    };
in
{
  mail-flow = script ./mail-flow.nix;
  accounts-live = script ./accounts-live.nix;
  broken-accounts = script ./broken-accounts.nix;
  acme = script ./acme.nix;
  dovecot23 = script ./dovecot23.nix;
  logins = script ./logins.nix;
}
