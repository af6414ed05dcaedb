# The rest of NixOS, as far as services.postmaster and nixpkgs' mail modules
# (postfix.nix, dovecot.nix, mail.nix, rspamd.nix) touch it: loosely typed declarations that
# accept any value, for lib.evalModules without nixpkgs' module tree. Used by
# nix/tests/module-eval.nix, both with the project's stubs of the mail modules
# (nix/tests/eval/stubs) and with nixpkgs' real ones.
#
# Only what the mail modules read has a declared default (security.pki.caBundle,
# ids, system.stateVersion, security.acme.certs.<name>.directory and .group) or a
# type they inspect (security.wrappers: mail.nix takes its element type).
{ lib, ... }:

let
  inherit (lib) mkOption types;

  # Like types.anything, but lists from several definitions are concatenated
  # (systemd's `wants`, `after`, … are lists set in more than one place).
  loose = lib.mkOptionType {
    name = "loose";
    description = "anything (stub)";
    check = _: true;
    merge =
      loc: defs:
      if builtins.all (d: builtins.isAttrs d.value && !(lib.isStringLike d.value)) defs then
        (types.attrsOf loose).merge loc defs
      else if builtins.all (d: builtins.isList d.value) defs then
        builtins.concatMap (d: d.value) defs
      else
        lib.mergeEqualOption loc defs;
  };
  stub = mkOption {
    type = loose;
    default = { };
  };
  looseSubmodule =
    options:
    types.submodule {
      freeformType = types.lazyAttrsOf loose;
      inherit options;
    };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    meta = stub;
    system.stateVersion = mkOption {
      type = types.str;
      default = "26.05";
    };
    # nixos/modules/misc/ids.nix, the entries the mail modules read (values: any).
    ids = mkOption {
      type = loose;
      default = {
        uids = {
          dovecot2 = 96;
          dovenull2 = 47;
          postfix = 29;
          rspamd = 225;
        };
        gids = {
          dovecot2 = 96;
          dovenull2 = 47;
          postfix = 29;
          postdrop = 63;
          rspamd = 225;
        };
      };
    };
    environment = stub;
    # redis.nix: boot.kernel.sysctl (vm.overcommit_memory).
    boot = stub;
    networking = mkOption {
      default = { };
      # The VM tests' nodes read it while setting networking.extraHosts.
      type = looseSubmodule {
        primaryIPAddress = mkOption { type = types.str; };
        # unbound.nix listens on ::1 too with it (NixOS's default).
        enableIPv6 = mkOption {
          type = types.bool;
          default = true;
        };
      };
    };
    security = {
      pki = mkOption {
        default = { };
        type = looseSubmodule {
          caBundle = mkOption {
            type = types.path;
            default = "/etc/ssl/certs/ca-certificates.crt";
          };
        };
      };
      # mail.nix declares services.mail.sendmailSetuidWrapper with this option's
      # element type.
      wrappers = mkOption {
        type = types.attrsOf (looseSubmodule { });
        default = { };
      };
      acme = mkOption {
        default = { };
        type = looseSubmodule {
          certs = mkOption {
            default = { };
            type = types.attrsOf (
              types.submodule (
                { name, ... }:
                {
                  freeformType = types.lazyAttrsOf loose;
                  options.directory = mkOption {
                    type = types.str;
                    default = "/var/lib/acme/${name}";
                  };
                  options.group = mkOption {
                    type = types.str;
                    default = "acme";
                  };
                }
              )
            );
          };
        };
      };
      dhparams = stub;
      pam = stub;
      polkit = stub;
    };
    systemd = stub;
    users = stub;
    services.dbus = stub;
    services.nginx = stub;
    services.openssh = stub;
    # postfix.nix renames its useSrs to services.pfix-srsd.enable (pfix-srsd.nix).
    services.pfix-srsd = stub;
    virtualisation = stub;
  };
}
