# Stub of nixpkgs' nixos/modules/services/mail/dovecot.nix in its newest
# NixOS/nixpkgs version at hand in June 2026 (master, so nixos-unstable and the
# coming 26.11; git blob a9dd9531fadfc756b4dadee636299a5e556c3571): settings is a submodule with typed
# top-level settings (default_internal_user and default_internal_group among
# them) and a free rest; services.dovecot2.user and .group are gone; the auth
# service is no longer made root (it runs as default_internal_user, whose primary
# group is default_internal_group); enablePAM defaults to false.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkIf types;
  common = import ./dovecot-common.nix { inherit lib; };
  inherit (common) opt fixedSectionWith;
  cfg = config.services.dovecot2;
  isPre24 = lib.versionOlder cfg.package.version "2.4";
  booleanList = types.oneOf [
    (types.attrsOf types.bool)
    (types.listOf types.str)
  ];
  nullOrSection =
    options:
    opt (types.nullOr (fixedSectionWith {
      inherit options;
    })) null;
in
{
  imports = common.imports ++ [
    (lib.mkRemovedOptionModule [ "services" "dovecot2" "sieve" "plugins" ] "")
  ];

  options.services.dovecot2 = common.options { inherit pkgs config; } // {
    settings = opt (types.submodule {
      options = {
        base_dir = opt types.path "/run/dovecot2";
        sendmail_path = opt types.path "/run/wrappers/bin/sendmail";
        mail_plugin_dir = opt types.path "/run/current-system/sw/lib/dovecot/modules";
        default_internal_user = opt types.str "dovecot2";
        default_internal_group = opt types.str "dovecot2";
        maildir_copy_with_hardlinks = opt types.bool true;
        auth_mechanisms = opt booleanList [
          "plain"
          "login"
        ];
        "passdb pam" = nullOrSection {
          driver = opt (types.nullOr types.str) (if isPre24 then "pam" else null);
          args = opt (types.nullOr (types.listOf types.str)) null;
          service_name = opt (types.nullOr types.str) (if isPre24 then null else "dovecot2");
          failure_show_msg = opt (types.nullOr types.bool) (if isPre24 then null else cfg.showPAMFailure);
        };
        "userdb passwd" = nullOrSection {
          driver = opt (types.nullOr types.str) (if isPre24 then "passwd" else null);
        };
        # Dovecot 2.3 only.
        plugin = nullOrSection {
          sieve_pipe_bin_dir = opt (types.nullOr types.path) null;
          sieve_plugins = opt (types.nullOr (types.listOf types.str)) null;
          sieve_extensions = opt (types.nullOr (types.listOf types.str)) null;
          sieve_global_extensions = opt (types.nullOr (types.listOf types.str)) null;
        };
        # Dovecot 2.4 only.
        sieve_script_bin_path = opt (types.nullOr types.str) (
          if isPre24 then null else "/tmp/dovecot-%{user|username|lower}"
        );
        sieve_pipe_bin_dir = opt (types.nullOr types.path) null;
        sieve_plugins = opt (types.nullOr booleanList) null;
        sieve_global_extensions = opt (types.nullOr booleanList) null;
      };
      freeformType = types.attrsOf common.valueType;
    }) { };
    enablePAM = opt types.bool false;
  };

  config = mkIf cfg.enable (
    lib.mkMerge [
      (common.config {
        inherit config cfg pkgs;
        internalUser = cfg.settings.default_internal_user;
        internalGroup = cfg.settings.default_internal_group;
      })
      {
        services.dovecot2.settings = lib.mkMerge [
          (mkIf isPre24 {
            "passdb pam" = mkIf cfg.enablePAM { args = [ "dovecot2" ]; };
            "userdb passwd" = mkIf cfg.enablePAM { };
          })
          (mkIf (!isPre24) {
            "passdb pam" = mkIf cfg.enablePAM { };
            "userdb passwd" = mkIf cfg.enablePAM { };
          })
        ];
      }
    ]
  );
}
