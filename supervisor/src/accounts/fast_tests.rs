//! The line by line path ([`super::fast`]) against the whole-file parse: the same
//! accounts on every file it takes, and the whole-file way for every other file.

use super::parse::parse_whole;
use super::*;
use crate::diag::{Invalid, Source};

const HASH: &str = "{SHA512-CRYPT}$6$rounds=5000$tdqH0s.oYduNxOGC$oqHD6xZZTs.LuOSMs.72k2qcgcjFaJ6JcKrH1fyqRSIRAhnoh6CSg/sw3gmR4v8O8x2nuUganwi2dxusIIbnl1";

fn policy() -> Policy {
    Policy {
        domains: vec!["example.org".into(), "example.net".into()],
        allow_plain_passwords: false,
    }
}

fn source(text: &str) -> Source {
    Source::new("accounts.toml", text.replace("HASH", HASH))
}

/// The file must be taken line by line, with the whole-file parse's accounts.
fn taken(text: &str) -> Accounts {
    let source = source(text);
    let whole = parse_whole(&source, &policy())
        .unwrap_or_else(|e| panic!("the whole-file parse refuses:\n{text}\n{e}"));
    let fast = fast::parse(&mut source.text.as_bytes(), &policy())
        .unwrap_or_else(|| panic!("not taken line by line:\n{text}"));
    assert_eq!(fast, whole, "{text}");
    fast
}

/// The file must go the whole-file way; `parse` then says exactly what it says.
fn left_to_the_whole_file_parse(text: &str) -> Result<Accounts, Invalid> {
    let source = source(text);
    assert_eq!(
        fast::parse(&mut source.text.as_bytes(), &policy()),
        None,
        "taken:\n{text}"
    );
    let whole = parse_whole(&source, &policy());
    assert_eq!(parse(&source, &policy()), whole, "{text}");
    whole
}

#[test]
fn the_plain_form_is_read_line_by_line() {
    let a = taken(
        r#"# Our accounts.
[mailboxes.thomas]
password = "HASH"
quota = "2G"   # plenty
send_as = ["@example.net", 'boss@example.org',]
  disabled = false

[mailboxes."anna"]
password = 'HASH'
quota = 1048576
disabled = true

[ mailboxes . bob ]
password="HASH"
send_as = []

[aliases]
postmaster = "thomas"
"sales@example.org" = ["thomas", "anna@elsewhere.example"]
'info@example.net' = [ "sales@example.org" , "bob" ]
chain = "sales@example.org"
	tabbed-key_1 = "anna" # a comment with "quotes" = and [brackets]
"dot.ted@example.org" = "bob"

[catch_all]
"example.org" = "thomas"
'example.net' = ["anna", "bob"]
"#,
    );
    assert_eq!(a.mailboxes.len(), 3);
    assert_eq!(a.mailboxes["anna"].quota, Some(1 << 20));
    assert!(a.mailboxes["anna"].disabled);
    assert_eq!(a.mailboxes["thomas"].send_as.len(), 2);
    assert_eq!(a.aliases.len(), 9);
    assert_eq!(a.catch_all.len(), 2);
}

#[test]
fn the_bench_file_is_read_line_by_line() {
    // The form `./bench`'s scale part writes, small.
    let mut text = String::new();
    for i in 0..50 {
        text.push_str(&format!("[mailboxes.m{i}]\npassword = \"HASH\"\n\n"));
    }
    text.push_str("[aliases]\n");
    for i in 0..500 {
        text.push_str(&format!("\"a{i}@example.org\" = \"m{}\"\n", i % 50));
    }
    assert_eq!(taken(&text).aliases.len(), 500);
    // And without a newline at the end.
    taken(text.trim_end());
}

#[test]
fn the_seed_is_read_line_by_line() {
    let a = taken(include_str!("../../../examples/seed/accounts.toml"));
    assert_eq!(a.aliases.len(), 16);
    assert_eq!(a.catch_all.len(), 2);
}

#[test]
fn other_valid_forms_go_the_whole_file_way_with_the_same_result() {
    let forms = [
        // Escapes, multi-line strings and arrays, dotted keys, inline tables.
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\n\"x\\u0040example.org\" = \"thomas\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\npostmaster = \"\\u0074homas\"\n",
        "[mailboxes.thomas]\npassword = \"\"\"HASH\"\"\"\n",
        "[mailboxes.thomas]\npassword = '''HASH'''\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\nsend_as = [\n  \"@example.net\",\n]\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\npostmaster = [\n\"thomas\"]\n",
        "mailboxes.thomas.password = \"HASH\"\n",
        "[mailboxes]\nthomas = { password = \"HASH\" }\n",
        "[mailboxes]\nthomas.password = \"HASH\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[\"aliases\"]\npostmaster = \"thomas\"\n",
        "aliases = { postmaster = \"thomas\" }\n[mailboxes.thomas]\npassword = \"HASH\"\n",
        // The aliases before a mailbox.
        "[aliases]\npostmaster = \"thomas\"\n[mailboxes.thomas]\npassword = \"HASH\"\n",
        "[mailboxes.anna]\npassword = \"HASH\"\n[aliases]\npostmaster = \"thomas\"\n[mailboxes.thomas]\npassword = \"HASH\"\n",
        // Numbers TOML writes other ways, CRLF line ends, a byte-order mark.
        "[mailboxes.thomas]\npassword = \"HASH\"\nquota = 1_048_576\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\nquota = 0x100000\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\nquota = +1048576\n",
        "[mailboxes.thomas]\r\npassword = \"HASH\"\r\n",
        "\u{feff}[mailboxes.thomas]\npassword = \"HASH\"\n",
    ];
    for text in forms {
        let accounts =
            left_to_the_whole_file_parse(text).unwrap_or_else(|e| panic!("refused:\n{text}\n{e}"));
        assert!(accounts.mailboxes.contains_key("thomas"), "{text}");
    }
}

#[test]
fn every_mistake_goes_the_whole_file_way_with_its_diagnostics() {
    let mistakes = [
        // TOML's own.
        "[mailboxes.thomas]\npassword = \"HASH\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\npassword = \"HASH\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[mailboxes.thomas]\npassword = \"HASH\"\n",
        // Found twice once every mailbox is read: before the aliases, or at the end.
        "[mailboxes.thomas]\npassword = \"HASH\"\n[mailboxes.anna]\npassword = \"HASH\"\n[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\nx = \"anna\"\n",
        "[catch_all]\n\"example.org\" = \"anna\"\n[mailboxes.anna]\npassword = \"HASH\"\n[mailboxes.anna]\npassword = \"HASH\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\n[aliases]\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\nx = \"thomas\"\nx = \"thomas\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[catch_all]\n\"example.org\" = \"thomas\"\n'example.org' = \"thomas\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\" x\n",
        "[mailboxes.thomas] x\npassword = \"HASH\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\nquota = 01\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\nsend_as = [,]\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\nsend_as = [\"@example.net\" \"@example.org\"]\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n# a \u{1} control character\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\npostmaster = \"thomas\"\"\n",
        "[[mailboxes]]\npassword = \"HASH\"\n",
        // Ours.
        "",
        "# nothing\n",
        "[aliases]\n",
        "[mailboxes.thomas]\n",
        "[mailboxes.thomas]\npassword = \"{PLAIN}secret\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\npasword = \"HASH\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\ndisabled = 1\n",
        "[mailboxes.thomas]\npassword = 5\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\nquota = 0\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\nquota = \"0M\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\nquota = \"2X\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\nsend_as = \"@example.net\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\nsend_as = [\"@elsewhere.example\"]\n",
        "[mailboxes.\"Bad Name\"]\npassword = \"HASH\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\nthomas = \"thomas\"\n",
        // An alias that is a mailbox's address, the mailbox defined after it.
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\nanna = \"thomas\"\n[mailboxes.anna]\npassword = \"HASH\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\nx = \"nobody\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\nx = []\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\nx = [\"thomas\", \"thomas\"]\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\n\"x@elsewhere.example\" = \"thomas\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\nx = \"thomas\"\n\"x@example.org\" = \"thomas\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[aliases]\na = \"b@example.org\"\nb = \"a@example.org\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[catch_all]\n\"elsewhere.example\" = \"thomas\"\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[catch_all]\n\"example.org\" = 1\n",
        "[mailboxes.thomas]\npassword = \"HASH\"\n[other]\n",
        "owner = \"me\"\n[mailboxes.thomas]\npassword = \"HASH\"\n",
    ];
    for text in mistakes {
        let invalid = left_to_the_whole_file_parse(text);
        assert!(invalid.is_err(), "accepted:\n{text}");
    }
}

/// A small deterministic generator (xorshift), so that the files below are the
/// same on every run and a failure can be reproduced.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// One of `good`, the `i`th (round), four times in five; else one of `bad`.
fn pick(rng: &mut Rng, good: &[&'static str], bad: &[&'static str], i: usize) -> &'static str {
    if rng.below(5) == 0 {
        rng.pick(bad)
    } else {
        good[i % good.len()]
    }
}

/// Files made of the plain form's pieces, some of them wrong, some in forms only
/// the whole-file parse takes: whatever the line by line path takes must be the
/// whole-file parse's result, and it must take every valid file in the plain form.
#[test]
fn generated_files_read_alike() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Each piece is picked from the good ones four times in five, else from the
    // ones that are wrong or only for the whole-file parse.
    let names = (["bob", "carl", "m1", "x-y"], ["Bad Name", "anna", "bob"]);
    let keys = (
        [
            "postmaster",
            "\"sales@example.org\"",
            "'info@example.net'",
            "\"dot.ted@example.org\"",
        ],
        [
            "sales",
            "\"x@elsewhere.example\"",
            "anna",
            "a.b",
            "\"\"",
            "\"a\\u0062c\"",
        ],
    );
    let targets = (
        [
            "\"anna\"",
            "'anna'",
            "\"anna@example.net\"",
            "\"pal@elsewhere.example\"",
            "[\"anna\", \"pal@elsewhere.example\"]",
            "[\"anna\",]",
            "[ 'anna' ]",
        ],
        [
            "\"postmaster@example.org\"",
            "[]",
            "\"nobody\"",
            "1",
            "\"b\\u0062\"",
            "[\n\"anna\"]",
            "[\"anna\", \"anna\"]",
        ],
    );
    let fields = (
        [
            "quota = \"2G\"",
            "quota = 1024",
            "disabled = true",
            "disabled = false",
            "send_as = [\"@example.net\"]",
            "send_as = ['boss@example.org', \"@example.org\"]",
        ],
        [
            "quota = 0",
            "send_as = [\"@elsewhere.example\"]",
            "colour = \"red\"",
            "password = \"HASH\"",
            "quota = 1_024",
        ],
    );
    let blanks = ["", "# a comment", "   ", "\t# indented comment"];
    let (mut accepted, mut fast, mut valid) = (0, 0, 0);
    for _ in 0..3000 {
        let mut text = String::from("[mailboxes.anna]\npassword = \"HASH\"\n");
        let first = rng.below(4);
        for i in 0..rng.below(3) {
            let name = pick(&mut rng, &names.0, &names.1, first + i);
            text.push_str(&format!("[mailboxes.{name}]\npassword = 'HASH'\n"));
            let first = rng.below(6);
            for j in 0..rng.below(3) {
                text.push_str(pick(&mut rng, &fields.0, &fields.1, first + j));
                text.push('\n');
            }
            text.push_str(rng.pick(&blanks));
            text.push('\n');
        }
        text.push_str("[aliases]\n");
        let first = rng.below(4);
        for i in 0..rng.below(4) {
            let key = pick(&mut rng, &keys.0, &keys.1, first + i);
            let i = rng.below(7);
            let target = pick(&mut rng, &targets.0, &targets.1, i);
            text.push_str(&format!("{key} = {target}"));
            text.push_str(rng.pick(&["\n", " # why\n", "\n\n"]));
        }
        if rng.below(2) == 0 {
            let i = rng.below(2);
            let domain = pick(
                &mut rng,
                &["\"example.org\"", "'example.net'"],
                &["\"elsewhere.example\"", "example.org"],
                i,
            );
            let i = rng.below(7);
            let target = pick(&mut rng, &targets.0, &targets.1, i);
            text.push_str(&format!("[catch_all]\n{domain} = {target}\n"));
        }
        let source = source(&text);
        let whole = parse_whole(&source, &policy());
        let line_by_line = fast::parse(&mut source.text.as_bytes(), &policy());
        // Lines cut across the reader's buffer read alike.
        let small_buffer = std::io::BufReader::with_capacity(5, source.text.as_bytes());
        assert_eq!(
            fast::parse(&mut { small_buffer }, &policy()),
            line_by_line,
            "{text}"
        );
        if let Some(a) = &line_by_line {
            assert_eq!(Ok(a), whole.as_ref(), "{text}");
            fast += 1;
        }
        // Without the forms only the whole-file parse takes, a valid file is taken.
        let plain = !text.contains('\\')
            && !text.contains("[\n")
            && !text.contains("a.b")
            && !text.contains("1_024");
        if whole.is_ok() {
            valid += 1;
            if plain {
                accepted += 1;
                assert!(
                    line_by_line.is_some(),
                    "a plain valid file not taken:\n{text}"
                );
            }
        }
        assert_eq!(parse(&source, &policy()), whole, "{text}");
    }
    // The generator makes enough of each kind for the comparison to mean something.
    assert!(
        valid > 400 && valid < 2900 && accepted == fast,
        "{valid} {fast} {accepted}"
    );
}
