# Stub of nixpkgs' nixos/modules/services/mail/dovecot.nix as the Dovecot 2.4
# rewrite first landed (NixOS/nixpkgs#500271, "nixos/dovecot: add settings option
# (RFC42), redux"; NixOS 26.05; git blob db183d26382d36926aa073421a9af49fba0dcea0):
# settings is a free attribute set of values and sections; user and group are
# options; dovecot's auth service runs as root.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkDefault mkIf types;
  common = import ./dovecot-common.nix { inherit lib; };
  inherit (common) opt;
  cfg = config.services.dovecot2;
  isPre24 = lib.versionOlder cfg.package.version "2.4";
in
{
  inherit (common) imports;

  options.services.dovecot2 = common.options { inherit pkgs config; } // {
    settings = opt (types.attrsOf common.valueType) { };
    user = opt types.str "dovecot2";
    group = opt types.str "dovecot2";
    enablePAM = opt types.bool true;
    sieve = (common.options { inherit pkgs config; }).sieve // {
      plugins = opt (types.listOf types.str) [ ];
    };
  };

  config = mkIf cfg.enable (
    lib.mkMerge [
      (common.config {
        inherit config cfg pkgs;
        internalUser = cfg.user;
        internalGroup = cfg.group;
      })
      {
        # As the real module: its preStart hands the compiled scripts to them.
        assertions = [
          {
            assertion =
              cfg.sieve.scripts != { } -> (cfg.settings.mail_uid != null && cfg.settings.mail_gid != null);
            message = "dovecot requires settings.mail_uid and settings.mail_gid to be set when `sieve.scripts` is set";
          }
        ];
        services.dovecot2.settings = lib.mkMerge [
          {
            base_dir = mkDefault "/run/dovecot2";
            default_internal_user = mkDefault cfg.user;
            default_internal_group = mkDefault cfg.group;
            auth_mechanisms = mkDefault "plain login";
            "service auth".user = "root";
          }
          (mkIf isPre24 {
            mail_location = mkDefault "maildir:/var/spool/mail/%u";
            passdb = mkIf cfg.enablePAM (mkDefault {
              driver = "pam";
              args = "dovecot2";
            });
            userdb = mkIf cfg.enablePAM (mkDefault {
              driver = "passwd";
            });
          })
          (mkIf (!isPre24) {
            mail_driver = mkDefault "maildir";
            mail_path = mkDefault "/var/spool/mail/%{user}";
            sieve_script_bin_path = "/tmp/dovecot-%{user|username|lower}";
            "passdb pam" = mkIf cfg.enablePAM (mkDefault {
              driver = "pam";
              service_name = "dovecot2";
            });
            "userdb passwd" = mkIf cfg.enablePAM (mkDefault {
              driver = "passwd";
            });
          })
        ];
      }
    ]
  );
}
