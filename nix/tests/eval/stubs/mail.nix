# Stub of nixpkgs' nixos/modules/services/mail/mail.nix (the newest NixOS/nixpkgs
# version at hand in June 2026, git blob b8aaad7aa363f094ac18d08538deec7081c4e634):
# its one option, typed like an element of security.wrappers.
{
  config,
  lib,
  options,
  ...
}:

{
  options.services.mail.sendmailSetuidWrapper = lib.mkOption {
    type = lib.types.nullOr options.security.wrappers.type.nestedTypes.elemType;
    default = null;
    internal = true;
  };

  config = lib.mkIf (config.services.mail.sendmailSetuidWrapper != null) {
    security.wrappers.sendmail = config.services.mail.sendmailSetuidWrapper;
  };
}
