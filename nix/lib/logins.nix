# Password guessing ([logins]), dovecot's side: the auth policy block of
# dovecot.conf, as dovecot_conf.rs's auth_policy() renders it for Debian (its
# text is built in Rust, not read from a template, hence a copy here). dovecot's
# auth asks postmaster's policy listener before each login and reports how it
# ended. Builtins only: tests/nix-checks.sh compares it byte for byte with what
# `postmaster render` writes, for 2.4 and 2.3, on and off.
let
  octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
  port = "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
in
{
  # A loopback address and port as config.rs accepts it for `policy_address` and
  # as Rust prints it back (what auth_policy_server_url carries): 127.x.y.z:PORT
  # or [::1]:PORT, PORT from 1 to 65535 without leading zeros.
  policyAddressPattern = "(127([.]${octet}){3}|[[]::1[]]):${port}";

  # dovecot.conf's block for dovecot `version` ("2.4" or "2.3"), as
  # `postmaster render` writes it where templates/dovecot-*.conf say
  # @AUTH_POLICY@. Only the client's address and protocol are sent (no user
  # name, no password hash); while postmaster does not answer, logins are
  # allowed (reject_on_fail = no).
  dovecotPolicy =
    {
      version,
      blockAfterFailures,
      failureWindowSeconds,
      blockSeconds,
      policyAddress,
    }:
    if blockAfterFailures == 0 then
      "# Off ([logins] block_after_failures = 0): failed logins block nobody.\n"
    else
      ''
        # ${toString blockAfterFailures} failed logins from one address within ${toString failureWindowSeconds} s block it for ${toString blockSeconds} s
        # ([logins] in postmaster's configuration; `postmaster status` lists blocks,
        # `postmaster unblock ADDRESS` lifts one).
        auth_policy_server_url = http://${policyAddress}/
      ''
      + (
        if version == "2.4" then
          # 2.4: a string list, and 2.4's variable names.
          ''
            auth_policy_request_attributes {
              remote = %{remote_ip}
              protocol = %{protocol}
            }
          ''
        else
          ''
            auth_policy_request_attributes = remote=%{rip} protocol=%s
          ''
      )
      + ''
        # Required by dovecot; used only for the password hash, which is not sent.
        auth_policy_hash_nonce = postmaster-sends-no-password-hash
        auth_policy_reject_on_fail = no
      ''
      + (if version == "2.4" then "" else "auth_policy_server_timeout_msecs = 2000\n");
}
