use std::collections::BTreeMap;

use super::*;

const DAY: i64 = 86_400;
// 2026-12-05 22:00:00 UTC
const NOW: i64 = 1_796_508_000;

fn key(selector: &str, public_key: &str, phase: Phase) -> Key {
    Key {
        selector: selector.into(),
        algorithm: Algorithm::Rsa2048,
        created: NOW - 10 * DAY,
        public_key: public_key.into(),
        phase,
    }
}

fn policy(rotate_after_days: Option<i64>) -> Policy {
    Policy {
        rotate_after: rotate_after_days.map(|d| d * DAY),
        keep_published: 7 * DAY,
        algorithms: vec![Algorithm::Rsa2048],
    }
}

fn domains() -> Vec<String> {
    vec!["example.org".into(), "example.net".into()]
}

fn state_with(domain: &str, keys: Vec<Key>) -> State {
    let mut s = State::default();
    s.domains.insert(domain.into(), keys);
    s
}

#[test]
fn a_domain_without_a_key_gets_one_in_use_at_once() {
    let s = state_with(
        "example.org",
        vec![key("pm1", "AAA", Phase::Active { since: NOW - DAY })],
    );
    assert_eq!(
        plan(&s, &domains(), &BTreeMap::new(), &policy(None), NOW),
        vec![Step::Generate {
            domain: "example.net".into(),
            algorithm: Algorithm::Rsa2048,
            activate: true
        }]
    );
}

#[test]
fn a_pending_key_is_used_only_once_dns_shows_exactly_it() {
    let s = state_with(
        "example.org",
        vec![
            key("pm1", "OLD", Phase::Active { since: NOW - DAY }),
            key("pm2", "NEW", Phase::Pending),
        ],
    );
    let domains = vec!["example.org".to_string()];
    let name = "pm2._domainkey.example.org".to_string();
    for seen in [
        None,
        Some(Seen::Missing),
        Some(Seen::Different("v=DKIM1; p=OTHER".into())),
        Some(Seen::Unknown("timed out".into())),
    ] {
        let seen: BTreeMap<String, Seen> = seen.into_iter().map(|s| (name.clone(), s)).collect();
        assert_eq!(
            plan(&s, &domains, &seen, &policy(None), NOW),
            vec![],
            "{seen:?}"
        );
    }
    let seen = BTreeMap::from([(name, Seen::Present)]);
    assert_eq!(
        plan(&s, &domains, &seen, &policy(None), NOW),
        vec![Step::Activate {
            domain: "example.org".into(),
            selector: "pm2".into()
        }]
    );
}

#[test]
fn activating_retires_the_old_key_for_the_time_mail_is_in_flight() {
    let mut s = state_with(
        "example.org",
        vec![
            key("pm1", "OLD", Phase::Active { since: NOW - DAY }),
            key("pm2", "NEW", Phase::Pending),
        ],
    );
    assert!(!s.activate("example.org", "pm9", NOW, 7 * DAY));
    assert!(s.activate("example.org", "pm2", NOW, 7 * DAY));
    assert_eq!(s.active("example.org").unwrap().selector, "pm2");
    assert_eq!(
        s.keys("example.org")[0].phase,
        Phase::Retiring {
            since: NOW,
            until: NOW + 7 * DAY
        }
    );
    // Published while needed, then no longer listed.
    let listed = |now| -> Vec<String> {
        published(&s, "example.org", now, &[Algorithm::Rsa2048])
            .into_iter()
            .map(|k| k.selector)
            .collect()
    };
    assert_eq!(listed(NOW + 7 * DAY - 1), vec!["pm1", "pm2"]);
    assert_eq!(listed(NOW + 7 * DAY), vec!["pm2"]);
    assert_eq!(
        describe_phase(&s.keys("example.org")[0], NOW),
        "replaced; keep published until 2026-12-12 22:00:00 UTC"
    );
    assert_eq!(
        describe_phase(&s.keys("example.org")[0], NOW + 8 * DAY),
        "replaced; its record may be removed"
    );
}

#[test]
fn rotation_on_a_schedule_starts_when_the_key_is_old_enough() {
    let s = state_with(
        "example.org",
        vec![key(
            "pm1",
            "K",
            Phase::Active {
                since: NOW - 30 * DAY,
            },
        )],
    );
    let domains = vec!["example.org".to_string()];
    assert_eq!(
        plan(&s, &domains, &BTreeMap::new(), &policy(None), NOW),
        vec![]
    );
    assert_eq!(
        plan(&s, &domains, &BTreeMap::new(), &policy(Some(31)), NOW),
        vec![]
    );
    assert_eq!(
        plan(&s, &domains, &BTreeMap::new(), &policy(Some(30)), NOW),
        vec![Step::Generate {
            domain: "example.org".into(),
            algorithm: Algorithm::Rsa2048,
            activate: false
        }]
    );
}

#[test]
fn selectors_are_never_reused() {
    let mut s = State::default();
    assert_eq!(s.new_selector("example.org", NOW), "pm20261205a");
    s.add(
        "example.org",
        key("pm20261205a", "K", Phase::Pending),
        true,
        NOW,
    );
    assert_eq!(s.new_selector("example.org", NOW), "pm20261205b");
    // Another domain has its own.
    assert_eq!(s.new_selector("example.net", NOW), "pm20261205a");
}

#[test]
fn dns_text_is_judged_by_its_key_not_its_spelling() {
    let k = key("pm1", "MIIBIjANBgkq", Phase::Pending);
    assert_eq!(judge(&k, &[]), Seen::Missing);
    assert_eq!(judge(&k, &["v=spf1 mx -all".into()]), Seen::Missing);
    assert_eq!(
        judge(&k, &["v=DKIM1; k=rsa; p=MIIBIjANBgkq".into()]),
        Seen::Present
    );
    // Wrapped base64, no k= (rsa is the default), tags in another order.
    assert_eq!(
        judge(&k, &["p=MIIBIj ANBgkq ; v=DKIM1".into()]),
        Seen::Present
    );
    assert_eq!(
        judge(&k, &["v=DKIM1; k=rsa; p=MIIBother".into()]),
        Seen::Different("v=DKIM1; k=rsa; p=MIIBother".into())
    );
    assert_eq!(
        judge(&k, &["v=DKIM1; k=ed25519; p=MIIBIjANBgkq".into()]),
        Seen::Different("v=DKIM1; k=ed25519; p=MIIBIjANBgkq".into())
    );
    // Of two records, one right one is enough for a verifier that tries both.
    assert_eq!(
        judge(
            &k,
            &["v=DKIM1; p=X".into(), "v=DKIM1; p=MIIBIjANBgkq".into()]
        ),
        Seen::Present
    );
}

#[test]
fn rspamd_signs_each_domain_with_its_key_in_use_only() {
    let mut s = state_with(
        "example.org",
        vec![
            key(
                "pm1",
                "OLD",
                Phase::Retiring {
                    since: NOW,
                    until: NOW + DAY,
                },
            ),
            key("pm2", "NEW", Phase::Active { since: NOW }),
            key("pm3", "NEXT", Phase::Pending),
        ],
    );
    s.domains.insert(
        "gone.example".into(),
        vec![key("pm1", "X", Phase::Active { since: NOW })],
    );
    let text = rspamd_domains(
        &s,
        &domains(),
        Path::new("/var/lib/postmaster/dkim"),
        &[Algorithm::Rsa2048, Algorithm::Ed25519],
    );
    assert_eq!(
        text,
        "# rspamd dkim_signing: the key each hosted domain is signed with.\n\
         # Generated by postmaster; it changes when a rotation completes.\n\
         domain {\n  \"example.org\" {\n    selectors [\n      {\n        path = \"/var/lib/postmaster/dkim/example.org.pm2.key\";\n        selector = \"pm2\";\n      }\n    ];\n  }\n}\n"
    );
}

#[test]
fn long_records_are_split_into_strings_of_255_bytes() {
    let text = "x".repeat(600);
    let parts = txt_strings(&text);
    assert_eq!(
        parts.iter().map(String::len).collect::<Vec<_>>(),
        vec![255, 255, 90]
    );
    assert_eq!(parts.concat(), text);
}

#[test]
fn the_state_file_keeps_its_shape() {
    let s = state_with(
        "example.org",
        vec![key("pm1", "K", Phase::Retiring { since: 1, until: 2 })],
    );
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(
        json,
        r#"{"domains":{"example.org":[{"selector":"pm1","algorithm":"rsa-2048","created":1795644000,"public_key":"K","phase":{"phase":"retiring","since":1,"until":2}}]}}"#
    );
    assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
}

#[test]
fn made_keys_are_rsa_2048_and_their_record_matches() {
    let (pem, public) = store::generate(Algorithm::Rsa2048).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(&public)
        .unwrap();
    // SubjectPublicKeyInfo of a 2048-bit RSA key: 294 bytes.
    assert_eq!(der.len(), 294);
    let k = Key {
        public_key: public.clone(),
        ..key("pm1", "", Phase::Pending)
    };
    assert_eq!(judge(&k, &[k.record_text()]), Seen::Present);
}

#[test]
fn what_dns_said_reads_as_the_status_shows_it() {
    assert_eq!(Seen::Present.to_string(), "present");
    assert_eq!(Seen::Missing.to_string(), "missing");
    assert_eq!(
        Seen::Different("v=DKIM1; p=X".into()).to_string(),
        "different: v=DKIM1; p=X"
    );
    assert_eq!(
        Seen::Unknown("timed out".into()).to_string(),
        "unknown: timed out"
    );
}

fn ed(selector: &str, public_key: &str, phase: Phase) -> Key {
    Key {
        algorithm: Algorithm::Ed25519,
        ..key(selector, public_key, phase)
    }
}

#[test]
fn ed25519_on_request_is_a_second_key_with_a_life_of_its_own() {
    let s = state_with(
        "example.org",
        vec![key("pm1", "RSA", Phase::Active { since: NOW - DAY })],
    );
    let both = Policy {
        algorithms: vec![Algorithm::Rsa2048, Algorithm::Ed25519],
        ..policy(None)
    };
    let domains = vec!["example.org".to_string()];
    // Asked for: a first Ed25519 key, in use at once, beside the RSA one.
    assert_eq!(
        plan(&s, &domains, &BTreeMap::new(), &both, NOW),
        vec![Step::Generate {
            domain: "example.org".into(),
            algorithm: Algorithm::Ed25519,
            activate: true
        }]
    );
    // Its rotation replaces the Ed25519 key only.
    let mut s = state_with(
        "example.org",
        vec![
            key("pm1", "RSA", Phase::Active { since: NOW - DAY }),
            ed("pm2", "ED", Phase::Active { since: NOW - DAY }),
            ed("pm3", "ED2", Phase::Pending),
        ],
    );
    assert!(s.activate("example.org", "pm3", NOW, 7 * DAY));
    assert_eq!(s.active("example.org").unwrap().selector, "pm1");
    assert_eq!(
        s.active_of("example.org", Algorithm::Ed25519)
            .unwrap()
            .selector,
        "pm3"
    );
    assert!(matches!(
        s.keys("example.org")[1].phase,
        Phase::Retiring { .. }
    ));
    // rspamd signs with both keys in use, RSA first; without Ed25519 asked for,
    // only the RSA one, and its record is no longer listed.
    let text = rspamd_domains(&s, &domains, Path::new("/k"), &both.algorithms);
    assert!(text.contains("selector = \"pm1\";\n      }\n      {\n        path = \"/k/example.org.pm3.key\";\n        selector = \"pm3\";"), "{text}");
    let rsa_only = rspamd_domains(&s, &domains, Path::new("/k"), &[Algorithm::Rsa2048]);
    assert!(!rsa_only.contains("pm3"), "{rsa_only}");
    // Turned off: the Ed25519 key in use retires (its record stays listed while
    // mail signed with it may be on its way), the RSA one is untouched.
    let rsa = Policy {
        algorithms: vec![Algorithm::Rsa2048],
        ..policy(None)
    };
    let steps = plan(&s, &domains, &BTreeMap::new(), &rsa, NOW);
    assert_eq!(
        steps,
        vec![Step::Retire {
            domain: "example.org".into(),
            selector: "pm3".into()
        }]
    );
    assert!(s.retire("example.org", "pm3", NOW, 7 * DAY));
    assert!(
        !s.retire("example.org", "pm3", NOW, 7 * DAY),
        "retired once"
    );
    assert_eq!(plan(&s, &domains, &BTreeMap::new(), &rsa, NOW), vec![]);
    let listed = |now| -> Vec<String> {
        published(&s, "example.org", now, &[Algorithm::Rsa2048])
            .into_iter()
            .map(|k| k.selector)
            .collect()
    };
    assert_eq!(listed(NOW), vec!["pm1", "pm2", "pm3"]);
    assert_eq!(listed(NOW + 7 * DAY), vec!["pm1"]);
}

#[test]
fn made_ed25519_keys_are_what_rspamd_and_dns_expect() {
    use base64::Engine;
    let (secret, public) = store::generate(Algorithm::Ed25519).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    // rspamd: one base64 line, the 32-byte seed and the 32-byte public key.
    let raw = b64.decode(secret.trim_end()).unwrap();
    assert_eq!(raw.len(), 64);
    assert!(secret.ends_with('\n') && !secret.trim_end().contains('\n'));
    // DNS (RFC 8463): p= is the raw 32-byte public key, the second half of it.
    assert_eq!(b64.decode(&public).unwrap(), raw[32..]);
    let k = Key {
        public_key: public.clone(),
        ..ed("pm1", "", Phase::Pending)
    };
    assert_eq!(k.record_text(), format!("v=DKIM1; k=ed25519; p={public}"));
    assert_eq!(judge(&k, &[k.record_text()]), Seen::Present);
    // The same key published as RSA is not it.
    assert!(matches!(
        judge(&k, &[format!("v=DKIM1; k=rsa; p={public}")]),
        Seen::Different(_)
    ));
}
