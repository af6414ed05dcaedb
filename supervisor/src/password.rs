//! Password hashes as dovecot understands them (`{SCHEME}hash`), and making them.
//!
//! The accounts file holds hashes only. A value that is not a recognised hash is
//! refused, and its text never appears in a message: it may be someone's password.

use std::fmt;

use rand::RngCore;

/// The schemes postmaster writes or accepts. Each is verified against dovecot's own
/// `doveadm pw -t` in the integration tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Scheme {
    Sha512Crypt,
    Sha256Crypt,
    BlfCrypt,
    Argon2id,
    Argon2i,
    /// Cleartext: refused unless the configuration is explicitly one for tests.
    Plain,
}

impl Scheme {
    pub(crate) const ALL: [Scheme; 6] = [
        Scheme::Sha512Crypt,
        Scheme::Sha256Crypt,
        Scheme::BlfCrypt,
        Scheme::Argon2id,
        Scheme::Argon2i,
        Scheme::Plain,
    ];

    /// The name between braces, as dovecot spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scheme::Sha512Crypt => "SHA512-CRYPT",
            Scheme::Sha256Crypt => "SHA256-CRYPT",
            Scheme::BlfCrypt => "BLF-CRYPT",
            Scheme::Argon2id => "ARGON2ID",
            Scheme::Argon2i => "ARGON2I",
            Scheme::Plain => "PLAIN",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Scheme> {
        Scheme::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// The shape the text after the braces must have.
    fn check_shape(self, hash: &str) -> Result<(), MisshapenHash> {
        let crypt64 = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
        };
        let b64 = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        };
        let ok = match self {
            Scheme::Sha512Crypt | Scheme::Sha256Crypt => {
                let (id, digest_len) = if self == Scheme::Sha512Crypt {
                    ("6", 86)
                } else {
                    ("5", 43)
                };
                let parts: Vec<&str> = hash.split('$').collect();
                // "", id, [rounds=N,] salt, digest
                match parts.as_slice() {
                    ["", i, rest @ ..] if *i == id => {
                        let rest = match rest {
                            [r, tail @ ..]
                                if r.strip_prefix("rounds=")
                                    .is_some_and(|n| n.parse::<u32>().is_ok()) =>
                            {
                                tail
                            }
                            _ => rest,
                        };
                        matches!(rest, [salt, digest]
                            if salt.len() <= 16 && crypt64(salt)
                            && digest.len() == digest_len && crypt64(digest))
                    }
                    _ => false,
                }
            }
            Scheme::BlfCrypt => {
                let parts: Vec<&str> = hash.split('$').collect();
                matches!(parts.as_slice(), ["", v, cost, rest]
                    if matches!(*v, "2a" | "2b" | "2y")
                    && cost.len() == 2 && cost.parse::<u32>().is_ok_and(|c| (4..=31).contains(&c))
                    && rest.len() == 53 && crypt64(rest))
            }
            Scheme::Argon2id | Scheme::Argon2i => {
                let id = if self == Scheme::Argon2id {
                    "argon2id"
                } else {
                    "argon2i"
                };
                let parts: Vec<&str> = hash.split('$').collect();
                matches!(parts.as_slice(), ["", i, v, params, salt, digest]
                    if *i == id && v.starts_with("v=") && params.starts_with("m=")
                    && !salt.is_empty() && b64(salt) && !digest.is_empty() && b64(digest))
            }
            Scheme::Plain => !hash.contains([':', '\n', '\r']),
        };
        if ok { Ok(()) } else { Err(MisshapenHash(self)) }
    }

    /// The shape [`Scheme::check_shape`] wants, as the refusal shows it.
    fn expected_shape(self) -> &'static str {
        match self {
            Scheme::Sha512Crypt => "expected $6$salt$hash",
            Scheme::Sha256Crypt => "expected $5$salt$hash",
            Scheme::BlfCrypt => "expected $2y$NN$ followed by 53 characters",
            Scheme::Argon2id => "expected $argon2id$v=19$m=…,t=…,p=…$salt$hash",
            Scheme::Argon2i => "expected $argon2i$v=19$m=…,t=…,p=…$salt$hash",
            Scheme::Plain => "a {PLAIN} password may not contain `:` or line breaks",
        }
    }
}

/// A hash whose text after `{SCHEME}` does not have the scheme's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this is not a valid {{{scheme}}} hash ({expected})", scheme = .0, expected = .0.expected_shape())]
struct MisshapenHash(Scheme);

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A password hash with its scheme, as written into dovecot's passwd-file.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PasswordHash {
    pub(crate) scheme: Scheme,
    /// The whole `{SCHEME}…` string.
    pub(crate) text: String,
}

// Debug never prints the hash (nor a test's {PLAIN} password).
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash({{{}}}…)", self.scheme)
    }
}

/// Why a password value was refused: what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) message: String,
    pub(crate) hint: String,
}

const HOW_TO_HASH: &str =
    "hash the password with `postmaster hash-password` and paste the line it prints";

/// Parses a `{SCHEME}hash` value.
pub(crate) fn parse(value: &str) -> Result<PasswordHash, Refused> {
    let Some(rest) = value.strip_prefix('{') else {
        let looks_hashed = value.starts_with('$');
        return Err(Refused {
            message: if looks_hashed {
                "the password hash has no {SCHEME} prefix".into()
            } else {
                "this looks like a plaintext password; only hashes are accepted".into()
            },
            hint: if value.starts_with("$6$") {
                "write it as {SHA512-CRYPT}$6$…".into()
            } else if value.starts_with("$2") {
                "write it as {BLF-CRYPT}$2y$…".into()
            } else if value.starts_with("$argon2id$") {
                "write it as {ARGON2ID}$argon2id$…".into()
            } else {
                HOW_TO_HASH.into()
            },
        });
    };
    let Some((name, hash)) = rest.split_once('}') else {
        return Err(Refused {
            message: "the password's {SCHEME} prefix is not closed with `}`".into(),
            hint: HOW_TO_HASH.into(),
        });
    };
    let Some(scheme) = Scheme::from_name(name) else {
        let known: Vec<&str> = Scheme::ALL
            .iter()
            .filter(|s| **s != Scheme::Plain)
            .map(|s| s.name())
            .collect();
        return Err(Refused {
            message: format!("unknown password scheme {{{}}}", name.escape_default()),
            hint: format!("use one of {}: {HOW_TO_HASH}", known.join(", ")),
        });
    };
    if scheme != Scheme::Plain && hash.is_empty() {
        return Err(Refused {
            message: format!("the {{{scheme}}} hash is empty"),
            hint: HOW_TO_HASH.into(),
        });
    }
    scheme.check_shape(hash).map_err(|misshapen| Refused {
        message: misshapen.to_string(),
        hint: HOW_TO_HASH.into(),
    })?;
    Ok(PasswordHash {
        scheme,
        // Normalise the scheme name's case: dovecot accepts any, diffs stay quiet.
        text: format!("{{{}}}{hash}", scheme.name()),
    })
}

/// Errors from hashing a password.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HashError {
    #[error("the password is empty")]
    Empty,
    #[error("the password contains a line break or NUL byte")]
    BadCharacter,
    #[error("postmaster does not make {0} hashes; choose SHA512-CRYPT, BLF-CRYPT or ARGON2ID")]
    Unsupported(Scheme),
    #[error("hashing failed: {0}")]
    Backend(String),
}

/// Rounds for SHA512-CRYPT: glibc's default, which is also what `doveadm pw` writes.
const SHA_CRYPT_ROUNDS: u32 = 5_000;
/// bcrypt cost: ~60 ms per login on a small server, a fair price for one.
const BCRYPT_COST: u32 = 10;

/// Hashes a password with a fresh random salt; returns the `{SCHEME}…` text.
pub(crate) fn hash(scheme: Scheme, password: &str) -> Result<String, HashError> {
    if password.is_empty() {
        return Err(HashError::Empty);
    }
    if password.contains(['\n', '\r', '\0']) {
        return Err(HashError::BadCharacter);
    }
    let mut rng = rand::rng();
    let hashed = match scheme {
        Scheme::Sha512Crypt => {
            use sha_crypt::password_hash::CustomizedPasswordHasher;
            // 12 random bytes encode to exactly 16 salt characters. sha-crypt's own
            // default salt is 22 characters, which glibc's crypt() (and so dovecot)
            // silently truncates to 16, so the hash would never verify.
            let mut salt = [0u8; 12];
            rng.fill_bytes(&mut salt);
            let params = sha_crypt::Params::new(SHA_CRYPT_ROUNDS)
                .map_err(|e| HashError::Backend(e.to_string()))?;
            sha_crypt::ShaCrypt::SHA512
                .hash_password_customized(password.as_bytes(), &salt, None, None, params)
                .map_err(|e| HashError::Backend(e.to_string()))?
                .to_string()
        }
        Scheme::BlfCrypt => {
            let mut salt = [0u8; 16];
            rng.fill_bytes(&mut salt);
            bcrypt::hash_with_salt(password, BCRYPT_COST, salt)
                .map_err(|e| HashError::Backend(e.to_string()))?
                // $2y$ is what dovecot's BLF-CRYPT writes and every crypt() reads.
                .format_for_version(bcrypt::Version::TwoY)
        }
        Scheme::Argon2id => {
            use argon2::password_hash::PasswordHasher;
            let mut salt = [0u8; 16];
            rng.fill_bytes(&mut salt);
            // libsodium, which dovecot verifies ARGON2ID with, handles one lane only.
            let params = argon2::Params::new(65_536, 3, 1, None)
                .map_err(|e| HashError::Backend(e.to_string()))?;
            let argon =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            argon
                .hash_password_with_salt(password.as_bytes(), &salt)
                .map_err(|e| HashError::Backend(e.to_string()))?
                .to_string()
        }
        other => return Err(HashError::Unsupported(other)),
    };
    Ok(format!("{{{}}}{hashed}", scheme.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misshapen_hash_says_which_shape_its_scheme_wants() {
        assert_eq!(
            MisshapenHash(Scheme::Sha512Crypt).to_string(),
            "this is not a valid {SHA512-CRYPT} hash (expected $6$salt$hash)"
        );
        assert_eq!(
            MisshapenHash(Scheme::BlfCrypt).to_string(),
            "this is not a valid {BLF-CRYPT} hash (expected $2y$NN$ followed by 53 characters)"
        );
        assert_eq!(
            MisshapenHash(Scheme::Plain).to_string(),
            "this is not a valid {PLAIN} hash (a {PLAIN} password may not contain `:` or line breaks)"
        );
        assert_eq!(
            Scheme::Argon2id.check_shape("$argon2i$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA"),
            Err(MisshapenHash(Scheme::Argon2id))
        );
    }

    #[test]
    fn made_hashes_parse_back_with_their_scheme() {
        for scheme in [Scheme::Sha512Crypt, Scheme::BlfCrypt, Scheme::Argon2id] {
            let text = hash(scheme, "correct horse").unwrap();
            let parsed = parse(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(parsed.scheme, scheme);
            assert_eq!(parsed.text, text);
        }
    }

    #[test]
    fn sha512_crypt_salt_is_sixteen_characters() {
        let text = hash(Scheme::Sha512Crypt, "pw").unwrap();
        let salt = text.split('$').rev().nth(1).unwrap();
        assert_eq!(salt.len(), 16, "{text}");
    }

    #[test]
    fn sha512_crypt_hashes_verify_with_the_reference_implementation() {
        use sha_crypt::password_hash::PasswordVerifier;
        let text = hash(Scheme::Sha512Crypt, "correct horse").unwrap();
        let mcf = text.strip_prefix("{SHA512-CRYPT}").unwrap();
        let parsed = sha_crypt::PasswordHashRef::new(mcf).unwrap();
        assert!(
            sha_crypt::ShaCrypt::SHA512
                .verify_password(b"correct horse", parsed)
                .is_ok()
        );
        assert!(
            sha_crypt::ShaCrypt::SHA512
                .verify_password(b"wrong", parsed)
                .is_err()
        );
    }

    #[test]
    fn refusals_say_what_and_never_echo_the_value() {
        let cases = [
            (
                "hunter2",
                "looks like a plaintext password",
                "postmaster hash-password",
            ),
            ("$6$abc$def", "no {SCHEME} prefix", "{SHA512-CRYPT}"),
            (
                "{MD5}abc",
                "unknown password scheme {MD5}",
                "use one of SHA512-CRYPT",
            ),
            ("{SHA512-CRYPT", "not closed", "postmaster hash-password"),
            ("{SHA512-CRYPT}", "hash is empty", ""),
            (
                "{SHA512-CRYPT}$6$x$short",
                "not a valid {SHA512-CRYPT} hash",
                "",
            ),
            ("{BLF-CRYPT}$2y$99$x", "not a valid {BLF-CRYPT} hash", ""),
            (
                "{ARGON2ID}$argon2i$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA",
                "not a valid {ARGON2ID}",
                "",
            ),
            ("{PLAIN}a:b", "may not contain `:`", ""),
        ];
        for (value, message, hint) in cases {
            let e = parse(value).unwrap_err();
            assert!(e.message.contains(message), "{value}: {e:?}");
            assert!(e.hint.contains(hint), "{value}: {e:?}");
            let secret = value.rsplit_once('}').map_or(value, |(_, s)| s);
            if secret.len() > 3 {
                assert!(
                    !e.message.contains(secret) && !e.hint.contains(secret),
                    "{value} echoed: {e:?}"
                );
            }
        }
    }

    #[test]
    fn plain_parses_as_plain() {
        let p = parse("{plain}secret").unwrap();
        assert_eq!(p.scheme, Scheme::Plain);
        assert_eq!(p.text, "{PLAIN}secret");
    }

    #[test]
    fn hashing_refuses_what_cannot_be_a_password() {
        assert!(matches!(
            hash(Scheme::Sha512Crypt, ""),
            Err(HashError::Empty)
        ));
        assert!(matches!(
            hash(Scheme::Sha512Crypt, "a\nb"),
            Err(HashError::BadCharacter)
        ));
        assert!(matches!(
            hash(Scheme::Plain, "x"),
            Err(HashError::Unsupported(Scheme::Plain))
        ));
    }
}
