//! The rendered postfix and dovecot configuration is accepted by this machine's
//! real `postconf` and `doveconf`, without a single warning.

mod common;
use common::*;

fn self_signed(dir: &std::path::Path) {
    let out = tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=mail.example.org",
            "-keyout",
            &dir.join("privkey.pem").display().to_string(),
            "-out",
            &dir.join("fullchain.pem").display().to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// "2.3" or "2.4": the dovecot on this machine.
fn dovecot_series() -> String {
    let out = tool("dovecot", &["--version"]);
    let v = String::from_utf8_lossy(&out.stdout);
    v.split('.').take(2).collect::<Vec<_>>().join(".")
}

#[test]
fn postconf_and_doveconf_accept_the_rendered_configuration() {
    let tls = tempfile::tempdir().unwrap();
    self_signed(tls.path());
    let series = dovecot_series();
    let setup = Setup::new(
        &format!(
            "[tls]\nsource = \"files\"\ncert = \"{0}/fullchain.pem\"\nkey = \"{0}/privkey.pem\"\n[dovecot]\nversion = \"{series}\"\n",
            tls.path().display()
        ),
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/seed/accounts.toml"
        ))
        .unwrap(),
    );
    // dovecot reads the installed pair while parsing its configuration.
    let installed = setup.dir.path().join("tls/pair.pem");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    let pair = std::fs::read_to_string(tls.path().join("privkey.pem")).unwrap()
        + &std::fs::read_to_string(tls.path().join("fullchain.pem")).unwrap();
    std::fs::write(&installed, pair).unwrap();
    let out_dir = setup.dir.path().join("out");
    let out = postmaster(
        &setup.config,
        &["render", "--out", &out_dir.display().to_string()],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let postfix_dir = out_dir.join("postfix").display().to_string();
    for flag in ["-n", "-M"] {
        let out = tool("postconf", &["-c", &postfix_dir, flag]);
        assert!(out.status.success(), "postconf {flag}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "postconf {flag} warns");
    }
    let main = stdout(&tool(
        "postconf",
        &[
            "-c",
            &postfix_dir,
            "-h",
            "smtpd_tls_mandatory_protocols",
            "smtpd_tls_auth_only",
            "smtpd_sasl_auth_enable",
        ],
    ));
    assert_eq!(
        main, ">=TLSv1.2\nyes\nno\n",
        "TLS floor, AUTH only over TLS, no AUTH on port 25"
    );
    let services = stdout(&tool(
        "postconf",
        &[
            "-c",
            &postfix_dir,
            "-P",
            "submission/inet/smtpd_tls_security_level",
            "submissions/inet/smtpd_tls_wrappermode",
        ],
    ));
    assert_eq!(
        services,
        "submission/inet/smtpd_tls_security_level = encrypt\nsubmissions/inet/smtpd_tls_wrappermode = yes\n"
    );

    let dovecot_conf = out_dir.join("dovecot/dovecot.conf").display().to_string();
    let out = tool("doveconf", &["-n", "-c", &dovecot_conf]);
    assert!(
        out.status.success(),
        "doveconf ({series}): {}",
        stderr(&out)
    );
    assert_eq!(stderr(&out), "", "doveconf ({series}) warns");
    let ssl = stdout(&tool("doveconf", &["-c", &dovecot_conf, "-h", "ssl"]));
    assert_eq!(ssl.trim(), "required");
}
