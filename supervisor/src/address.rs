//! Mail addresses, local parts and domain names, validated to what postfix maps,
//! dovecot's passwd-file and a person's mail client all handle without quoting.
//!
//! Deliberately narrower than RFC 5321: lowercase only (postfix and dovecot compare
//! case-insensitively, so `Thomas` and `thomas` would be one mailbox under two names),
//! no quoted local parts, no `+` (it is the recipient delimiter: `thomas+lists` already
//! reaches `thomas`).

use std::fmt;

/// Why a local part or a domain name was refused; the text completes "… is not valid: ".
pub(crate) type Why = String;

pub(crate) const MAX_LOCAL_PART: usize = 64;
pub(crate) const MAX_DOMAIN: usize = 253;

/// Checks a local part (the part before `@`).
pub(crate) fn check_local_part(s: &str) -> Result<(), Why> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > MAX_LOCAL_PART {
        return Err(format!("it is longer than {MAX_LOCAL_PART} characters"));
    }
    if s.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("it has uppercase letters; write it in lowercase".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(match c {
            '+' => "`+` is the recipient delimiter (thomas+tag reaches thomas already)".into(),
            '@' => "it contains `@`".into(),
            c => format!(
                "`{}` is not allowed (use a-z, 0-9, `.`, `-`, `_`)",
                c.escape_default()
            ),
        });
    }
    if s.starts_with('.') || s.ends_with('.') || s.contains("..") {
        return Err("a dot may not start or end it, nor follow another dot".into());
    }
    Ok(())
}

/// Checks a domain name: at least two labels, letters, digits and hyphens.
pub(crate) fn check_domain(s: &str) -> Result<(), Why> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > MAX_DOMAIN {
        return Err(format!("it is longer than {MAX_DOMAIN} characters"));
    }
    if s.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("it has uppercase letters; write it in lowercase".into());
    }
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return Err("it needs at least two labels, like example.org".into());
    }
    for label in &labels {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row, or a dot at an end)".into());
        }
        if label.len() > 63 {
            return Err(format!("the label `{label}` is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!(
                "`{}` is not allowed in a domain name (use a-z, 0-9 and `-`; write IDNs in their xn-- form)",
                c.escape_default()
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the label `{label}` starts or ends with `-`"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("the last label is all digits (an IP address is not a domain)".into());
    }
    Ok(())
}

/// A validated `local@domain` address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Address {
    pub(crate) local: String,
    pub(crate) domain: String,
}

impl Address {
    pub(crate) fn parse(s: &str) -> Result<Address, Why> {
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err("it has no `@`".into());
        };
        check_local_part(local).map_err(|why| format!("its local part {why}"))?;
        check_domain(domain).map_err(|why| format!("its domain {why}"))?;
        Ok(Address {
            local: local.into(),
            domain: domain.into(),
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_parts() {
        for ok in ["thomas", "t.x", "a-b_c", "0", &"a".repeat(64)] {
            assert_eq!(check_local_part(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", "it is empty"),
            ("Thomas", "uppercase"),
            ("a+b", "recipient delimiter"),
            ("a b", "` ` is not allowed"),
            ("a:b", "`:` is not allowed"),
            (".a", "a dot may not"),
            ("a..b", "a dot may not"),
            ("a.", "a dot may not"),
            ("a@b", "contains `@`"),
        ];
        for (s, why) in bad {
            let e = check_local_part(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
        assert!(
            check_local_part(&"a".repeat(65))
                .unwrap_err()
                .contains("longer than 64")
        );
    }

    #[test]
    fn domains() {
        for ok in [
            "example.org",
            "mail.example.org",
            "xn--bcher-kva.example",
            "a-b.c0",
        ] {
            assert_eq!(check_domain(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", "empty"),
            ("localhost", "two labels"),
            ("Example.org", "uppercase"),
            ("a..org", "empty label"),
            ("-a.org", "starts or ends with `-`"),
            ("bücher.example", "xn--"),
            ("127.0.0.1", "IP address"),
            ("a_b.org", "`_` is not allowed"),
        ];
        for (s, why) in bad {
            let e = check_domain(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn addresses() {
        let a = Address::parse("thomas@example.org").unwrap();
        assert_eq!(a.to_string(), "thomas@example.org");
        assert!(Address::parse("thomas").unwrap_err().contains("no `@`"));
        assert!(
            Address::parse("@example.org")
                .unwrap_err()
                .contains("local part it is empty")
        );
        assert!(Address::parse("a@b").unwrap_err().contains("two labels"));
    }
}
