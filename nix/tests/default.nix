# NixOS VM tests of services.postmaster, one per scenario of the Debian test bed.
# `nix flake check` runs them all; one alone: `nix build .#checks.x86_64-linux.mail-flow`.
#
#   mail-flow         the bed's scenario suite (tests/scenarios/test_mail_flow.py,
#                     unchanged) against the seed's mail host with accounts declared
#                     in Nix: submission -> IMAPS/POP3S, catch-all, no open relay,
#                     TLS 1.2+ on every port, no forged senders, quota, disabled login;
#                     IMAP, POP3 and ManageSieve through postmaster's TLS front (systemd's
#                     sockets), dovecot on loopback behind it, seeing the clients' addresses;
#                     then DKIM: submitted and local mail delivered signed by rspamd
#                     (d=example.org, the selector in use), mail from port 25 unsigned
#   accounts-live     the admin edits the accounts file (in place, and by rename as
#                     editors do): new mailbox, new alias, removal, all live; postfix
#                     and dovecot keep their main PIDs
#   acme              postmaster gets its certificate from pebble (http-01 on port 80
#                     through systemd's socket) and a renewal is served on every port
#                     (the TLS front's 993, 995, 143, 110, 4190 too) without restarting
#                     postfix or dovecot, and without reloading dovecot
#   broken-accounts   a broken accounts file is refused, the last good accounts keep
#                     being served, and `postmaster status` names file:line:column
#   dovecot23         the same mail host on Dovecot 2.3 (system.stateVersion 25.11,
#                     so nixpkgs keeps dovecot_2_3): the bed's scenario suite again
#   logins            password guessing (tests/scenarios/test_logins.py): wrong
#                     passwords over IMAP, POP3 and SMTP AUTH block the guesser's
#                     address, another address still logs in, `postmaster status`
#                     lists the block, `postmaster unblock` lifts it; only dovecot's
#                     auth (and root) may report to the policy listener
{ pkgs, module }:

let
  inherit (pkgs) lib;
  common = import ./common.nix { inherit pkgs module; };
  test = file: pkgs.testers.runNixOSTest (import file { inherit common pkgs; });
in
{
  mail-flow = test ./mail-flow.nix;
  accounts-live = test ./accounts-live.nix;
  acme = test ./acme.nix;
  broken-accounts = test ./broken-accounts.nix;
  dovecot23 = test ./dovecot23.nix;
  logins = test ./logins.nix;

  # Evaluation only, no VM: the builtins-only helpers (nix/tests/lib-eval.nix) and
  # the module with lib.evalModules (nix/tests/module-eval.nix: the VM tests' mail
  # nodes, README.md's NixOS examples, the module's checks) against the project's
  # stubs of nixpkgs' mail modules (both dovecot generations) and against this
  # nixpkgs' real ones; they throw on a mismatch. tests/nix-checks.sh evaluates the
  # same files (module-eval.nix with minilib, and with a nixpkgs lib when given one).
  lib-eval = pkgs.runCommand "postmaster-nix-lib-eval" { } ''
    echo ${lib.escapeShellArg (import ./lib-eval.nix { }).summary} > $out
  '';
  module-eval = pkgs.runCommand "postmaster-module-eval" { } ''
    echo ${lib.escapeShellArg (import ./module-eval.nix { inherit lib; }).summary} > $out
  '';
  # minilib (nix/tests/eval/minilib), the module system CI evaluates with, against
  # this nixpkgs' lib: its unit tests give nixpkgs' values, and module-eval.nix
  # sees exactly the same under both (every configuration's snapshot).
  module-eval-minilib =
    let
      underMinilib = import ./module-eval.nix { lib = import ./eval/minilib; };
      underNixpkgs = import ./module-eval.nix { inherit lib; };
      unitTests = import ./eval/minilib/tests.nix { inherit lib; };
    in
    if builtins.toJSON underMinilib.snapshot != builtins.toJSON underNixpkgs.snapshot then
      throw "nix/tests/eval/minilib: module-eval.nix sees other values than under nixpkgs' lib (tests/nix-checks.sh with POSTMASTER_NIXPKGS_LIB shows where)"
    else
      pkgs.runCommand "postmaster-module-eval-minilib" { } ''
        echo ${lib.escapeShellArg "${underMinilib.summary}; ${unitTests.summary}"} > $out
      '';
  # The same checks against this nixpkgs' own postfix, mail and dovecot modules.
  module-eval-nixpkgs = pkgs.runCommand "postmaster-module-eval-nixpkgs" { } ''
    echo ${
      lib.escapeShellArg
        (import ./module-eval.nix {
          inherit lib;
          nixpkgs = pkgs.path;
        }).summary
    } > $out
  '';
}
