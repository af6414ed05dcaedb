# The options nixpkgs' mail modules (or the project's stubs of them, in
# nix/tests/eval/stubs) declare under services.{postfix,dovecot2,rspamd,mail}, and
# under services.redis and services.unbound when their modules are given:
# every option's path and its type's description, the options of submodules
# included. tests/nix-checks.sh compares the stubs' tree with that of nixpkgs' real
# modules (opt-in, POSTMASTER_NIXPKGS_MODULES): a stub that declares an option the
# real module lacks, or types it otherwise, would let module-eval.nix pass a
# configuration nixpkgs refuses (issue #10).
#
#   nix-instantiate --eval --strict --json nix/tests/eval/option-tree.nix \
#     --arg lib 'import ./nix/tests/eval/minilib' \
#     --arg mailModules '[ ./nix/tests/eval/stubs/postfix.nix … ]'
{
  lib,
  mailModules,
}:

let
  pkgs = import ./pkgs.nix { inherit lib; };
  inherit
    (lib.evalModules {
      modules = [
        ./nixos.nix
        { _module.args.pkgs = pkgs; }
      ]
      ++ mailModules;
    })
    options
    ;

  # Submodules nest (dovecot's sections hold sections): six levels are more
  # than any declared option is deep.
  walk =
    depth: prefix: set:
    lib.concatLists (
      lib.mapAttrsToList (
        name: value:
        let
          path = prefix ++ [ name ];
          sub = builtins.tryEval (value.type.getSubOptions path);
        in
        if name == "_module" || name == "_freeformOptions" then
          [ ]
        else if lib.isOption value then
          [ "${lib.concatStringsSep "." path}: ${value.type.description}" ]
          ++ (if depth < 6 && sub.success then walk (depth + 1) path sub.value else [ ])
        else if builtins.isAttrs value then
          walk depth path value
        else
          [ ]
      ) set
    );
in
# The services these modules are about (redis and unbound: when their module is
# among them), not the loose rest of NixOS (eval/nixos.nix).
walk 0 [ "services" ] (
  lib.filterAttrs (name: _: options.services ? ${name}) {
    inherit (options.services)
      postfix
      dovecot2
      rspamd
      mail
      ;
    redis = options.services.redis or null;
    unbound = options.services.unbound or null;
  }
)
