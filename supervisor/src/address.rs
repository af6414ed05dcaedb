//! Mail addresses, local parts and domain names, validated to what postfix maps,
//! dovecot's passwd-file and a person's mail client all handle without quoting.
//!
//! Deliberately narrower than RFC 5321: lowercase only (postfix and dovecot compare
//! case-insensitively, so `Thomas` and `thomas` would be one mailbox under two names),
//! no quoted local parts, no `+` (it is the recipient delimiter: `thomas+lists` already
//! reaches `thomas`).

use std::fmt;

pub(crate) const MAX_LOCAL_PART: usize = 64;
pub(crate) const MAX_DOMAIN: usize = 253;

/// Why a local part was refused; the text completes "… is not valid: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidLocalPart {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than {MAX_LOCAL_PART} characters")]
    TooLong,
    #[error("it has uppercase letters; write it in lowercase")]
    Uppercase,
    #[error("`+` is the recipient delimiter (thomas+tag reaches thomas already)")]
    RecipientDelimiter,
    #[error("it contains `@`")]
    At,
    /// The first character outside a-z, 0-9, `.`, `-`, `_`.
    #[error("`{}` is not allowed (use a-z, 0-9, `.`, `-`, `_`)", .0.escape_default())]
    Character(char),
    #[error("a dot may not start or end it, nor follow another dot")]
    Dots,
}

/// Why a domain name was refused; the text completes "… is not valid: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidDomain {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than {MAX_DOMAIN} characters")]
    TooLong,
    #[error("it has uppercase letters; write it in lowercase")]
    Uppercase,
    #[error("it needs at least two labels, like example.org")]
    OneLabel,
    #[error("it has an empty label (two dots in a row, or a dot at an end)")]
    EmptyLabel,
    #[error("the label `{0}` is longer than 63 characters")]
    LongLabel(String),
    /// The first character outside a-z, 0-9 and `-`.
    #[error(
        "`{}` is not allowed in a domain name (use a-z, 0-9 and `-`; write IDNs in their xn-- form)",
        .0.escape_default()
    )]
    Character(char),
    #[error("the label `{0}` starts or ends with `-`")]
    HyphenAtEnd(String),
    #[error("the last label is all digits (an IP address is not a domain)")]
    AllDigits,
}

/// Why an address was refused; the text completes "… is not a valid address: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidAddress {
    #[error("it has no `@`")]
    NoAt,
    #[error("its local part {0}")]
    LocalPart(InvalidLocalPart),
    #[error("its domain {0}")]
    Domain(InvalidDomain),
}

/// Checks a local part (the part before `@`).
pub(crate) fn check_local_part(s: &str) -> Result<(), InvalidLocalPart> {
    if s.is_empty() {
        return Err(InvalidLocalPart::Empty);
    }
    if s.len() > MAX_LOCAL_PART {
        return Err(InvalidLocalPart::TooLong);
    }
    if s.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(InvalidLocalPart::Uppercase);
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(match c {
            '+' => InvalidLocalPart::RecipientDelimiter,
            '@' => InvalidLocalPart::At,
            c => InvalidLocalPart::Character(c),
        });
    }
    if s.starts_with('.') || s.ends_with('.') || s.contains("..") {
        return Err(InvalidLocalPart::Dots);
    }
    Ok(())
}

/// Checks a domain name: at least two labels, letters, digits and hyphens.
pub(crate) fn check_domain(s: &str) -> Result<(), InvalidDomain> {
    if s.is_empty() {
        return Err(InvalidDomain::Empty);
    }
    if s.len() > MAX_DOMAIN {
        return Err(InvalidDomain::TooLong);
    }
    if s.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(InvalidDomain::Uppercase);
    }
    let labels: Vec<&str> = s.split('.').collect();
    if labels.len() < 2 {
        return Err(InvalidDomain::OneLabel);
    }
    for label in &labels {
        if label.is_empty() {
            return Err(InvalidDomain::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(InvalidDomain::LongLabel(label.to_string()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(InvalidDomain::Character(c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(InvalidDomain::HyphenAtEnd(label.to_string()));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(InvalidDomain::AllDigits);
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
    pub(crate) fn parse(s: &str) -> Result<Address, InvalidAddress> {
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(InvalidAddress::NoAt);
        };
        check_local_part(local).map_err(InvalidAddress::LocalPart)?;
        check_domain(domain).map_err(InvalidAddress::Domain)?;
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
            let e = check_local_part(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
        assert!(
            check_local_part(&"a".repeat(65))
                .unwrap_err()
                .to_string()
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
            let e = check_domain(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn addresses() {
        let a = Address::parse("thomas@example.org").unwrap();
        assert_eq!(a.to_string(), "thomas@example.org");
        assert_eq!(Address::parse("thomas"), Err(InvalidAddress::NoAt));
        assert_eq!(
            Address::parse("@example.org"),
            Err(InvalidAddress::LocalPart(InvalidLocalPart::Empty))
        );
        assert_eq!(
            Address::parse("a@b"),
            Err(InvalidAddress::Domain(InvalidDomain::OneLabel))
        );
    }

    /// The accounts and configuration errors people read end with these texts.
    #[test]
    fn why_a_name_is_invalid_reads_as_before() {
        let local = |e: InvalidLocalPart| e.to_string();
        assert_eq!(local(InvalidLocalPart::Empty), "it is empty");
        assert_eq!(
            local(InvalidLocalPart::TooLong),
            "it is longer than 64 characters"
        );
        assert_eq!(
            local(InvalidLocalPart::Uppercase),
            "it has uppercase letters; write it in lowercase"
        );
        assert_eq!(
            local(InvalidLocalPart::RecipientDelimiter),
            "`+` is the recipient delimiter (thomas+tag reaches thomas already)"
        );
        assert_eq!(local(InvalidLocalPart::At), "it contains `@`");
        assert_eq!(
            local(InvalidLocalPart::Character('\t')),
            "`\\t` is not allowed (use a-z, 0-9, `.`, `-`, `_`)"
        );
        assert_eq!(
            local(InvalidLocalPart::Dots),
            "a dot may not start or end it, nor follow another dot"
        );
        let domain = |e: InvalidDomain| e.to_string();
        assert_eq!(domain(InvalidDomain::Empty), "it is empty");
        assert_eq!(
            domain(InvalidDomain::TooLong),
            "it is longer than 253 characters"
        );
        assert_eq!(
            domain(InvalidDomain::Uppercase),
            "it has uppercase letters; write it in lowercase"
        );
        assert_eq!(
            domain(InvalidDomain::OneLabel),
            "it needs at least two labels, like example.org"
        );
        assert_eq!(
            domain(InvalidDomain::EmptyLabel),
            "it has an empty label (two dots in a row, or a dot at an end)"
        );
        assert_eq!(
            domain(InvalidDomain::LongLabel("a".repeat(64))),
            format!(
                "the label `{}` is longer than 63 characters",
                "a".repeat(64)
            )
        );
        assert_eq!(
            domain(InvalidDomain::Character('ü')),
            "`\\u{fc}` is not allowed in a domain name (use a-z, 0-9 and `-`; write IDNs in their xn-- form)"
        );
        assert_eq!(
            domain(InvalidDomain::HyphenAtEnd("-a".into())),
            "the label `-a` starts or ends with `-`"
        );
        assert_eq!(
            domain(InvalidDomain::AllDigits),
            "the last label is all digits (an IP address is not a domain)"
        );
        assert_eq!(InvalidAddress::NoAt.to_string(), "it has no `@`");
        assert_eq!(
            InvalidAddress::LocalPart(InvalidLocalPart::Empty).to_string(),
            "its local part it is empty"
        );
        assert_eq!(
            InvalidAddress::Domain(InvalidDomain::OneLabel).to_string(),
            "its domain it needs at least two labels, like example.org"
        );
    }
}
