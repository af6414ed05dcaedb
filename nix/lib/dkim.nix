# DKIM signing as on Debian: rspamd's local.d/dkim_signing.conf and postfix's
# milter settings, from postmaster's own templates (supervisor/src/render), so the
# NixOS module and `postmaster render` cannot drift apart.
#
# Builtins only (no nixpkgs), so that tests/nix-checks.sh can evaluate it with
# nothing but `nix-instantiate` and compare it with what `postmaster render`
# writes. The NixOS module (../module.nix) uses it.
let
  fill = import ./template.nix;
in
{
  # rspamd's local.d/dkim_signing.conf, as supervisor/src/render/rspamd_conf.rs
  # fills it: the signing policy, and the table of keys the daemon writes into
  # `generatedDir` included.
  signingConf =
    {
      configFile,
      hostName,
      generatedDir,
      enabled ? true,
    }:
    fill "rspamd-dkim_signing.conf" {
      CONFIG_FILE = configFile;
      ENABLED = if enabled then "true" else "false";
      HOST_NAME = hostName;
      # supervisor/src/dkim/store.rs: RSPAMD_DOMAINS
      RSPAMD_DOMAINS = "${generatedDir}/rspamd/dkim_domains.conf";
    };

  # rspamd's local.d/settings.conf: what logged-in users submit and what the host
  # sends itself is signed, not scanned.
  settingsConf = { configFile }: fill "rspamd-settings.conf" { CONFIG_FILE = configFile; };

  # main.cf's "DKIM signing" block (templates/main.cf, as postfix_conf.rs fills
  # it): what is submitted and what postfix makes itself (sendmail, bounces) goes
  # through the milter; while it does not answer, such mail is refused with a
  # temporary error (451 4.7.1), never sent unsigned. Port 25 gets no milter.
  postfixMain =
    { enabled, milter }:
    {
      submission_milters = if enabled then milter else "";
      non_smtpd_milters = "$submission_milters";
      internal_mail_filter_classes = if enabled then "bounce" else "";
      milter_default_action = "tempfail";
      milter_protocol = 6;
      milter_mail_macros = "i {mail_addr} {client_addr} {client_name} {auth_authen}";
    };

  # master.cf: the options submission (587) and submissions (465) get, as in
  # templates/master.cf.
  submissionOptions = {
    smtpd_milters = "$submission_milters";
    milter_macro_daemon_name = "ORIGINATING";
  };
}
