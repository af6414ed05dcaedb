use super::*;
use crate::diag::Source;
use crate::dkim::{Algorithm, Key, Phase, State};

const NOW: i64 = 1_796_508_000; // 2026-12-05 22:00:00 UTC
const DAY: i64 = 86_400;

fn config(extra: &str) -> Config {
    Config::parse(&Source::new(
        "/etc/postmaster/config.toml",
        format!("host_name = \"mail.example.org\"\ndomains = [\"example.org\", \"example.net\"]\n{extra}"),
    ))
    .unwrap()
}

fn keys() -> State {
    let key = |selector: &str, p: &str, phase| Key {
        selector: selector.into(),
        algorithm: Algorithm::Rsa2048,
        created: NOW - DAY,
        public_key: p.into(),
        phase,
    };
    let mut s = State::default();
    s.domains.insert(
        "example.org".into(),
        vec![
            key(
                "pm1",
                "OLD",
                Phase::Retiring {
                    since: NOW - DAY,
                    until: NOW + DAY,
                },
            ),
            key("pm2", &"K".repeat(392), Phase::Active { since: NOW - DAY }),
        ],
    );
    s
}

fn record<'r>(records: &'r [Record], name: &str, rtype: RType) -> &'r Record {
    records
        .iter()
        .find(|r| r.name == name && r.rtype == rtype)
        .unwrap_or_else(|| panic!("no {name} {rtype:?}"))
}

#[test]
fn every_record_a_hosted_domain_needs() {
    let r = records(&config(""), &keys(), NOW);
    let org: Vec<(String, &str, bool)> = r
        .iter()
        .filter(|r| r.domain == "example.org")
        .map(|r| (r.name.clone(), r.rtype.name(), r.required))
        .collect();
    assert_eq!(
        org,
        vec![
            ("example.org".into(), "MX", true),
            ("example.org".into(), "TXT", true),
            ("pm1._domainkey.example.org".into(), "TXT", true),
            ("pm2._domainkey.example.org".into(), "TXT", true),
            ("_dmarc.example.org".into(), "TXT", true),
            ("_submissions._tcp.example.org".into(), "SRV", false),
            ("_submission._tcp.example.org".into(), "SRV", false),
            ("_imaps._tcp.example.org".into(), "SRV", false),
            ("_imap._tcp.example.org".into(), "SRV", false),
            ("_pop3s._tcp.example.org".into(), "SRV", false),
            ("_pop3._tcp.example.org".into(), "SRV", false),
        ]
    );
    assert_eq!(
        record(&r, "example.org", RType::MX).value,
        "10 mail.example.org."
    );
    assert_eq!(
        record(&r, "example.org", RType::TXT).value,
        "v=spf1 mx -all"
    );
    assert_eq!(
        record(&r, "_dmarc.example.org", RType::TXT).value,
        "v=DMARC1; p=quarantine"
    );
    assert_eq!(
        record(&r, "_submission._tcp.example.org", RType::SRV).value,
        "10 1 587 mail.example.org."
    );
    // example.net has no key yet (the daemon makes it): no DKIM record to print.
    assert!(
        !r.iter()
            .any(|r| r.name.ends_with("._domainkey.example.net"))
    );
    // Without [dns] addresses, nothing about the host's address is printed as a record.
    assert!(
        !r.iter()
            .any(|r| matches!(r.rtype, RType::A | RType::AAAA | RType::PTR))
    );

    let r = records(&config("[dkim]\nenabled = false\n"), &keys(), NOW);
    assert!(!r.iter().any(|r| r.name.contains("_domainkey")));
}

#[test]
fn the_hosts_addresses_and_their_reverse_names() {
    let c = config(
        "[dns]\naddresses = [\"192.0.2.25\", \"2001:db8::25\"]\nspf = \"v=spf1 a:mail.example.org -all\"\n",
    );
    let r = records(&c, &keys(), NOW);
    assert_eq!(record(&r, "mail.example.org", RType::A).value, "192.0.2.25");
    assert_eq!(
        record(&r, "mail.example.org", RType::AAAA).value,
        "2001:db8::25"
    );
    assert_eq!(
        record(&r, "25.2.0.192.in-addr.arpa", RType::PTR).value,
        "mail.example.org."
    );
    assert_eq!(
        reverse_name("2001:db8::25".parse().unwrap()),
        "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
    );
    assert_eq!(
        record(&r, "example.net", RType::TXT).value,
        "v=spf1 a:mail.example.org -all"
    );
}

#[test]
fn zone_text_splits_long_records_and_says_what_each_is_for() {
    let c = config("[dns]\nttl = 300\n");
    let text = zone_text(&c, &records(&c, &keys(), NOW));
    assert!(text.starts_with("; ---- example.org ----\n; mail for example.org is delivered to mail.example.org\nexample.org. 300 IN MX 10 mail.example.org.\n"));
    assert!(text.contains("\n; SPF: which hosts may send mail from this domain\nexample.org. 300 IN TXT \"v=spf1 mx -all\"\n"));
    let p = "K".repeat(392);
    let whole = format!("v=DKIM1; k=rsa; p={p}");
    assert!(text.contains(&format!(
        "; DKIM key pm2: in use since 2026-12-04 22:00:00 UTC\npm2._domainkey.example.org. 300 IN TXT ( \"{}\" \"{}\" )\n",
        &whole[..255],
        &whole[255..]
    )));
    assert!(
        text.contains("; DKIM key pm1: replaced; keep published until 2026-12-06 22:00:00 UTC\n")
    );
    assert!(text.contains("; mail clients find the server by themselves (RFC 6186) (recommended)\n_imaps._tcp.example.org. 300 IN SRV 0 1 993 mail.example.org.\n"));
    assert!(text.contains("mail.example.org needs A (and AAAA) records"));
}

#[test]
fn what_dns_says_is_judged_exactly() {
    let c = config("");
    let k = keys();
    let r = records(&c, &k, NOW);
    let judge = |name: &str, rtype, found: Found| super::judge(record(&r, name, rtype), &found, &k);
    let ok = |v: &[&str]| Ok(v.iter().map(|s| s.to_string()).collect());

    assert_eq!(
        judge("example.org", RType::MX, ok(&["20 MAIL.example.org."])),
        Verdict::Ok
    );
    assert_eq!(judge("example.org", RType::MX, ok(&[])), Verdict::Missing);
    assert_eq!(
        judge("example.org", RType::MX, ok(&["10 mx.elsewhere.example."])),
        Verdict::Different("10 mx.elsewhere.example.".into())
    );
    // SPF: other TXT records do not count; white space does not matter; two SPF
    // records are an error (RFC 7208 3.2).
    assert_eq!(
        judge(
            "example.org",
            RType::TXT,
            ok(&["google-site-verification=x", "v=spf1  mx -all"])
        ),
        Verdict::Ok
    );
    assert_eq!(
        judge(
            "example.org",
            RType::TXT,
            ok(&["google-site-verification=x"])
        ),
        Verdict::Missing
    );
    assert_eq!(
        judge("example.org", RType::TXT, ok(&["v=spf1 mx ~all"])),
        Verdict::Different("v=spf1 mx ~all".into())
    );
    assert_eq!(
        judge(
            "example.org",
            RType::TXT,
            ok(&["v=spf1 mx -all", "v=spf1 a -all"])
        ),
        Verdict::Different(
            "2 records, where only one may be: \"v=spf1 mx -all\", \"v=spf1 a -all\"".into()
        )
    );
    assert_eq!(
        judge(
            "_dmarc.example.org",
            RType::TXT,
            ok(&["v=DMARC1;p=quarantine;"])
        ),
        Verdict::Ok
    );
    assert_eq!(
        judge("_dmarc.example.org", RType::TXT, ok(&["v=DMARC1; p=none"])),
        Verdict::Different("v=DMARC1; p=none".into())
    );
    let p = "K".repeat(392);
    assert_eq!(
        judge(
            "pm2._domainkey.example.org",
            RType::TXT,
            ok(&[&format!("v=DKIM1; k=rsa; p={p}")])
        ),
        Verdict::Ok
    );
    assert_eq!(
        judge("pm2._domainkey.example.org", RType::TXT, ok(&[])),
        Verdict::Missing
    );
    assert_eq!(
        judge(
            "pm1._domainkey.example.org",
            RType::TXT,
            ok(&["v=DKIM1; p=NEW"])
        ),
        Verdict::Different("v=DKIM1; p=NEW".into())
    );
    assert_eq!(
        judge(
            "_imaps._tcp.example.org",
            RType::SRV,
            ok(&["5 0 993 mail.example.org."])
        ),
        Verdict::Ok
    );
    assert_eq!(
        judge(
            "_imaps._tcp.example.org",
            RType::SRV,
            ok(&["0 1 143 mail.example.org."])
        ),
        Verdict::Different("0 1 143 mail.example.org.".into())
    );
    assert_eq!(
        judge(
            "example.org",
            RType::MX,
            Err(NoAnswer("no answer from 127.0.0.1:53".into()))
        ),
        Verdict::Unknown("no answer from 127.0.0.1:53".into())
    );
}

#[test]
fn no_answer_says_what_the_resolver_said() {
    use hickory_resolver::net::NetError;
    assert_eq!(
        NoAnswer(NetError::from("no answer from 127.0.0.1:53")).to_string(),
        "no answer from 127.0.0.1:53"
    );
    assert_eq!(NoAnswer(NetError::Timeout).to_string(), "request timed out");
}

#[test]
fn a_resolver_that_cannot_be_set_up_says_why() {
    let e = lookup::LookupError::Configuration(Box::new(std::io::Error::from_raw_os_error(2)));
    assert_eq!(
        e.to_string(),
        "cannot read the resolver configuration (/etc/resolv.conf): No such file or directory (os error 2)"
    );
    let e = lookup::LookupError::Setup(Box::new(std::io::Error::from_raw_os_error(24)));
    assert_eq!(
        e.to_string(),
        "cannot set up a resolver: Too many open files (os error 24)"
    );
}
