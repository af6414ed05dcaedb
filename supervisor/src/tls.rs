//! Is this certificate/key pair fit to hand to postfix and dovecot?
//!
//! A pair is validated before every install because its writers are not careful:
//! `cp` is not atomic (a watcher sees a new chain next to the old key, or half a
//! file), people point the chain at `cert.pem` instead of `fullchain.pem` or swap
//! the two paths, and a certificate can be expired or for other names. postfix and
//! dovecot would start serving any of these and clients would fail, so nothing is
//! installed unless [`validate_pair`] accepts it. Every [`PairProblem`] reads as a
//! sentence for the journal and `postmaster status`.
//!
//! Pure: no I/O, the caller passes the bytes and the time.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

/// What the daemon and `postmaster status` show about a validated pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The leaf's subject DN (may be empty: CAs are dropping the CN).
    pub(crate) subject: String,
    pub(crate) issuer: String,
    /// The DNS names clients may check against: the DNS SANs, or the CN when the
    /// certificate has no DNS SAN at all.
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// SHA-256 of the leaf DER, lowercase hex without colons: what the probe compares
    /// with what is really served.
    pub sha256_fingerprint: String,
    /// Certificates in the chain file, the leaf included.
    pub chain_len: usize,
}

impl CertInfo {
    /// Whole days until `not_after`, rounded down; negative once expired.
    pub fn days_left(&self, now: SystemTime) -> i64 {
        (unix_seconds(self.not_after) - unix_seconds(now)).div_euclid(86_400)
    }
}

/// Why a pair must not be installed. The text says what is wrong and what to do.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PairProblem {
    #[error(
        "the chain file is empty (a writer may still be halfway: waiting for it to be written)"
    )]
    ChainFileEmpty,
    #[error("the key file is empty (a writer may still be halfway: waiting for it to be written)")]
    KeyFileEmpty,
    #[error(
        "the chain file is cut short: {0} (a writer may still be halfway: waiting for it to be complete)"
    )]
    ChainCutShort(String),
    #[error(
        "the key file is cut short: {0} (a writer may still be halfway: waiting for it to be complete)"
    )]
    KeyCutShort(String),
    #[error("the chain file is not PEM: {0}")]
    ChainNotPem(String),
    #[error("the key file is not PEM: {0}")]
    KeyNotPem(String),
    /// `found` lists the PEM sections the file does hold, which often explains the mistake
    /// (a CSR, a CRL).
    #[error("no certificate in the chain file{}", holds(found))]
    NoCertificate { found: Vec<String> },
    #[error("no private key in the key file{}", holds(found))]
    NoPrivateKey { found: Vec<String> },
    #[error(
        "the chain file holds a private key and the key file holds certificates: the two paths are swapped"
    )]
    Swapped,
    #[error(
        "the private key is encrypted with a passphrase: postfix and dovecot need it unencrypted (decrypt it with `openssl pkey -in KEY -out NEWKEY`)"
    )]
    EncryptedKey,
    #[error("the key file holds {0} private keys: it must hold exactly one, the certificate's")]
    KeyCount(usize),
    #[error(
        "unsupported private key type: use RSA (2048 to 8192 bits), ECDSA P-256 or P-384, or Ed25519"
    )]
    UnsupportedKey,
    /// `index` counts from 1, the leaf.
    #[error("certificate {index} in the chain file cannot be read: {reason}")]
    BadCertificate { index: usize, reason: String },
    #[error(
        "the private key does not match the certificate (a writer may still be halfway: waiting for the pair to settle)"
    )]
    KeyMismatch,
    /// Seen when the chain file holds an intermediate or root only (`chain.pem`).
    #[error(
        "the first certificate in the chain file is a CA certificate ({subject}), not this server's: the chain file must start with the server certificate (use fullchain.pem, not chain.pem)"
    )]
    LeafIsCa { subject: String },
    /// Certificate `position + 1` should have issued certificate `position` (both from 1).
    #[error("the chain is out of order: certificate {} did not issue certificate {position} (the server certificate comes first, then each certificate's issuer)", position + 1)]
    ChainOutOfOrder { position: usize },
    /// A lone leaf from a CA: most clients cannot build a path to a root without the
    /// intermediate, so this is the `cert.pem` instead of `fullchain.pem` mistake.
    #[error(
        "the chain file holds only the server certificate, not its issuer's ({issuer}): use the full chain (fullchain.pem, not cert.pem; for a private CA, append the CA certificate)"
    )]
    MissingIntermediate { issuer: String },
    #[error("the certificate is not valid until {} (is this host's clock right?)", format_utc(*not_before))]
    NotYetValid { not_before: SystemTime },
    #[error("the certificate expired on {}: renew it", format_utc(*not_after))]
    Expired { not_after: SystemTime },
    #[error("the certificate is not for TLS servers: its extended key usage lacks serverAuth")]
    NotForServers,
    #[error("the certificate does not cover {name} ({})", covers(covered))]
    NameNotCovered { name: String, covered: Vec<String> },
}

impl PairProblem {
    /// True when the files may just be mid-write (see the "halfway" texts): the caller
    /// should re-check after a short pause before reporting the problem loudly.
    pub(crate) fn may_be_in_progress(&self) -> bool {
        matches!(
            self,
            PairProblem::ChainFileEmpty
                | PairProblem::KeyFileEmpty
                | PairProblem::ChainCutShort(_)
                | PairProblem::KeyCutShort(_)
                | PairProblem::KeyMismatch
                | PairProblem::MissingIntermediate { .. }
        )
    }
}

fn holds(found: &[String]) -> String {
    if found.is_empty() {
        String::new()
    } else {
        format!(" (it holds: {})", found.join(", "))
    }
}

fn covers(names: &[String]) -> String {
    if names.is_empty() {
        "it covers no DNS name".to_string()
    } else {
        format!("it covers: {}", names.join(", "))
    }
}

/// The pair file postmaster installs (the private key, then the chain) as rustls
/// serves it: for `postmaster tls-front`, which reads it again at each reload.
/// The pair was validated before it was installed; this checks only what serving
/// needs (one usable key, matching the first certificate).
pub(crate) fn certified_pair(pem: &[u8]) -> Result<rustls::sign::CertifiedKey, PairProblem> {
    let file = read_pem(pem).map_err(|fault| fault.in_chain_file())?;
    if file.certs.is_empty() {
        return Err(PairProblem::NoCertificate {
            found: file.other_labels,
        });
    }
    let key = the_one_key(&file)?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|_| PairProblem::UnsupportedKey)?;
    let certified = rustls::sign::CertifiedKey::new(file.certs, signing_key);
    certified
        .keys_match()
        .map_err(|_| PairProblem::KeyMismatch)?;
    Ok(certified)
}

/// The one unencrypted private key a file must hold.
fn the_one_key(file: &PemFile) -> Result<&PrivateKeyDer<'static>, PairProblem> {
    match (file.keys.as_slice(), file.encrypted_keys) {
        ([only], 0) => Ok(only),
        ([], 0) => Err(PairProblem::NoPrivateKey {
            found: file.other_labels.clone(),
        }),
        ([], 1) => Err(PairProblem::EncryptedKey),
        (keys, encrypted) => Err(PairProblem::KeyCount(keys.len() + encrypted)),
    }
}

/// Validates a chain (leaf first) and its private key for serving `required_names` at `now`.
///
/// Either file may also hold the other's sections (a combined key+chain file works as
/// both arguments); certificates in the key file are ignored.
pub fn validate_pair(
    chain_pem: &[u8],
    key_pem: &[u8],
    required_names: &[String],
    now: SystemTime,
) -> Result<CertInfo, PairProblem> {
    let chain = read_pem(chain_pem).map_err(|fault| fault.in_chain_file())?;
    let key = read_pem(key_pem).map_err(|fault| fault.in_key_file())?;

    if chain.certs.is_empty() {
        if !chain.keys.is_empty() && !key.certs.is_empty() && key.keys.is_empty() {
            return Err(PairProblem::Swapped);
        }
        return Err(PairProblem::NoCertificate {
            found: chain.other_labels,
        });
    }
    let private_key = the_one_key(&key)?;

    let mut parsed = Vec::with_capacity(chain.certs.len());
    for (i, der) in chain.certs.iter().enumerate() {
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => parsed.push(cert),
            Err(e) => {
                return Err(PairProblem::BadCertificate {
                    index: i + 1,
                    reason: e.to_string(),
                });
            }
        }
    }
    let leaf = &parsed[0];
    let names = leaf_names(leaf).map_err(|e| PairProblem::BadCertificate {
        index: 1,
        reason: e.to_string(),
    })?;
    let uncovered = required_names
        .iter()
        .find(|required| !names.iter().any(|n| name_covers(n, required)));

    let signing_key = rustls::crypto::ring::sign::any_supported_type(private_key)
        .map_err(|_| PairProblem::UnsupportedKey)?;
    // from_der() would tolerate keys it cannot compare; here "cannot tell" must not pass.
    let certified = rustls::sign::CertifiedKey::new(chain.certs.clone(), signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            // A CA certificate first that neither matches the key nor names this host is
            // the chain.pem mistake, not a pair caught mid-write.
            if leaf.is_ca() && uncovered.is_some() {
                return Err(PairProblem::LeafIsCa {
                    subject: leaf.subject().to_string(),
                });
            }
            return Err(PairProblem::KeyMismatch);
        }
        Err(rustls::Error::InconsistentKeys(_)) => return Err(PairProblem::UnsupportedKey),
        Err(other) => {
            return Err(PairProblem::BadCertificate {
                index: 1,
                reason: other.to_string(),
            });
        }
    }

    for (position, pair) in parsed.windows(2).enumerate() {
        if !same_name(pair[0].issuer(), pair[1].subject()) {
            return Err(PairProblem::ChainOutOfOrder {
                position: position + 1,
            });
        }
    }
    if parsed.len() == 1 && !same_name(leaf.issuer(), leaf.subject()) {
        return Err(PairProblem::MissingIntermediate {
            issuer: leaf.issuer().to_string(),
        });
    }

    let not_before = system_time(leaf.validity().not_before);
    let not_after = system_time(leaf.validity().not_after);
    if now < not_before {
        return Err(PairProblem::NotYetValid { not_before });
    }
    if now > not_after {
        return Err(PairProblem::Expired { not_after });
    }

    match leaf.extended_key_usage() {
        Ok(Some(eku)) if !(eku.value.server_auth || eku.value.any) => {
            return Err(PairProblem::NotForServers);
        }
        Ok(_) => {}
        Err(e) => {
            return Err(PairProblem::BadCertificate {
                index: 1,
                reason: e.to_string(),
            });
        }
    }

    if let Some(name) = uncovered {
        if leaf.is_ca() {
            return Err(PairProblem::LeafIsCa {
                subject: leaf.subject().to_string(),
            });
        }
        return Err(PairProblem::NameNotCovered {
            name: name.clone(),
            covered: names,
        });
    }

    Ok(CertInfo {
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        names,
        not_before,
        not_after,
        sha256_fingerprint: leaf_fingerprint_of_der(&chain.certs[0]),
        chain_len: chain.certs.len(),
    })
}

/// SHA-256 of a certificate's DER, lowercase hex without separators.
pub(crate) fn leaf_fingerprint_of_der(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// A self-signed ECDSA P-256 pair for `names`, valid from an hour before `now` (clocks
/// differ) for 90 days: lets postfix and dovecot start before the first real
/// certificate exists. Returns (chain PEM, PKCS#8 key PEM).
///
/// Names that cannot be put in a certificate (not ASCII) are left out; validating the
/// result against them then says so.
pub fn self_signed_placeholder(names: &[String], now: SystemTime) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .expect("ring generates P-256 keys unless the system has no randomness");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = names
        .iter()
        .filter_map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Some(rcgen::SanType::IpAddress(ip)),
            Err(_) => rcgen::string::Ia5String::try_from(name.as_str())
                .ok()
                .map(rcgen::SanType::DnsName),
        })
        .collect();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        names
            .first()
            .map_or("postmaster placeholder", String::as_str),
    );
    // Tells an admin who looks at what is served why it is self-signed.
    dn.push(rcgen::DnType::OrganizationName, "postmaster placeholder");
    params.distinguished_name = dn;
    let start = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
    params.not_before = asn1_time(start).to_datetime();
    params.not_after = asn1_time(start + Duration::from_secs(90 * 86_400)).to_datetime();
    let cert = params
        .self_signed(&key)
        .expect("rcgen signs a certificate made of validated parts");
    (cert.pem(), key.serialize_pem())
}

/// `2026-01-02 03:04:05 UTC`: how times appear in problems and status.
/// RFC 3339 in UTC to the second, for machine-read output (status JSON).
pub(crate) fn format_rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn format_utc(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil: (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// The `time` crate's type without depending on `time`: rcgen wants it, x509-parser
/// makes it.
fn asn1_time(t: SystemTime) -> ASN1Time {
    // 9999-12-31T23:59:59Z is the last second X.509 (GeneralizedTime) can say.
    const LAST: i64 = 253_402_300_799;
    ASN1Time::from_timestamp(unix_seconds(t).clamp(0, LAST))
        .expect("clamped into the representable range")
}

/// DNS SANs, else the CN (RFC 6125: clients ignore the CN once any DNS SAN exists).
/// `Err` is the parser's reason the SAN extension cannot be read (two of them, say).
fn leaf_names(leaf: &X509Certificate<'_>) -> Result<Vec<String>, X509Error> {
    let mut names = Vec::new();
    if let Some(san) = leaf.subject_alternative_name()? {
        for general in &san.value.general_names {
            if let GeneralName::DNSName(name) = general {
                names.push((*name).to_string());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            leaf.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_string),
        );
    }
    Ok(names)
}

/// RFC 6125 matching: case-insensitive, a trailing dot ignored, and `*` only as the
/// whole leftmost label, standing for exactly one label.
fn name_covers(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if pattern == name {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(parent), Some((first, rest))) => {
            !first.is_empty() && !parent.is_empty() && rest == parent
        }
        _ => false,
    }
}

/// Issuer/subject DN equality: byte-equal, or equal as text when CAs encode the same
/// name with different string types.
fn same_name(a: &x509_parser::x509::X509Name<'_>, b: &x509_parser::x509::X509Name<'_>) -> bool {
    a.as_raw() == b.as_raw() || a.to_string().eq_ignore_ascii_case(&b.to_string())
}

/// The parts of a PEM file validation cares about.
#[derive(Debug, Default)]
struct PemFile {
    certs: Vec<CertificateDer<'static>>,
    keys: Vec<PrivateKeyDer<'static>>,
    encrypted_keys: usize,
    /// Labels of sections that are neither certificates nor keys, for messages.
    other_labels: Vec<String>,
}

/// Why bytes are not a usable PEM file, before knowing which file it was.
#[derive(Debug, PartialEq)]
enum PemFault {
    Empty,
    Binary,
    NoSections,
    CutShort(String),
    Broken(String),
}

impl PemFault {
    fn in_chain_file(self) -> PairProblem {
        match self {
            PemFault::Empty => PairProblem::ChainFileEmpty,
            PemFault::Binary => PairProblem::ChainNotPem(
                "it holds binary data (if it is DER, convert it: `openssl x509 -inform der -in FILE -out FILE.pem`)"
                    .to_string(),
            ),
            PemFault::NoSections => PairProblem::ChainNotPem("it has no -----BEGIN CERTIFICATE----- line".to_string()),
            PemFault::CutShort(what) => PairProblem::ChainCutShort(what),
            PemFault::Broken(what) => PairProblem::ChainNotPem(what),
        }
    }

    fn in_key_file(self) -> PairProblem {
        match self {
            PemFault::Empty => PairProblem::KeyFileEmpty,
            PemFault::Binary => PairProblem::KeyNotPem(
                "it holds binary data (if it is DER, convert it: `openssl pkey -inform der -in FILE -out FILE.pem`)"
                    .to_string(),
            ),
            PemFault::NoSections => PairProblem::KeyNotPem("it has no -----BEGIN PRIVATE KEY----- line".to_string()),
            PemFault::CutShort(what) => PairProblem::KeyCutShort(what),
            PemFault::Broken(what) => PairProblem::KeyNotPem(what),
        }
    }
}

/// One `-----BEGIN X-----` .. `-----END X-----` section, located in the file.
struct Section<'a> {
    label: &'a str,
    /// Line number of the BEGIN line, from 1.
    line: usize,
    /// Byte range from the BEGIN line through the END line.
    range: Range<usize>,
    /// Old-style OpenSSL encryption: `Proc-Type: 4,ENCRYPTED` headers inside.
    encrypted: bool,
}

/// Reads a PEM file strictly enough to tell a file cut short from a complete one.
///
/// rustls-pki-types decodes the sections but skips anything that is not a complete
/// section, so a chain cut inside its second BEGIN line would read as a one-certificate
/// chain. The line scan here finds the structure first; pki-types decodes each section.
fn read_pem(bytes: &[u8]) -> Result<PemFile, PemFault> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(PemFault::Empty);
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => text,
        _ => return Err(PemFault::Binary),
    };

    // Windows editors may put a byte order mark before the first BEGIN line.
    let (text, mut offset) = match text.strip_prefix('\u{feff}') {
        Some(rest) => (rest, '\u{feff}'.len_utf8()),
        None => (text, 0),
    };
    let mut lines = Vec::new();
    for raw in text.split_inclusive('\n') {
        lines.push((offset, offset + raw.len(), raw.trim_end()));
        offset += raw.len();
    }
    let last_content = lines
        .iter()
        .rposition(|(_, _, line)| !line.is_empty())
        .unwrap_or(0);

    let mut sections = Vec::new();
    let mut open: Option<Section<'_>> = None;
    for (i, &(start, end, line)) in lines.iter().enumerate() {
        let number = i + 1;
        let at_end = i == last_content;
        let broken = |what: String| {
            if at_end {
                PemFault::CutShort(what)
            } else {
                PemFault::Broken(what)
            }
        };
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            let Some(label) = rest.strip_suffix("-----") else {
                return Err(broken(format!(
                    "line {number} is an incomplete -----BEGIN line"
                )));
            };
            if let Some(section) = &open {
                return Err(PemFault::Broken(format!(
                    "line {number} begins a {label} inside the {} that begins on line {}",
                    section.label, section.line
                )));
            }
            open = Some(Section {
                label,
                line: number,
                range: start..end,
                encrypted: false,
            });
        } else if let Some(rest) = line.strip_prefix("-----END ") {
            let Some(label) = rest.strip_suffix("-----") else {
                return Err(broken(format!(
                    "line {number} is an incomplete -----END line"
                )));
            };
            match open.take() {
                Some(mut section) if section.label == label => {
                    section.range.end = end;
                    sections.push(section);
                }
                Some(section) => {
                    return Err(PemFault::Broken(format!(
                        "line {number} ends a {label}, but the section that begins on line {} is a {}",
                        section.line, section.label
                    )));
                }
                None => {
                    return Err(PemFault::Broken(format!(
                        "line {number} ends a {label} that never began"
                    )));
                }
            }
        } else if line.starts_with("-----") || (at_end && line.starts_with('-')) {
            return Err(broken(format!("line {number} is an incomplete PEM marker")));
        } else if let Some(section) = &mut open
            && line.starts_with("Proc-Type:")
            && line.contains("ENCRYPTED")
        {
            section.encrypted = true;
        }
    }
    if let Some(section) = open {
        return Err(PemFault::CutShort(format!(
            "the {} that begins on line {} has no -----END line",
            section.label, section.line
        )));
    }
    if sections.is_empty() {
        return Err(PemFault::NoSections);
    }

    let mut file = PemFile::default();
    for section in sections {
        let body = &bytes[section.range.clone()];
        let undecodable = |_| {
            PemFault::Broken(format!(
                "the {} that begins on line {} is not valid base64",
                section.label, section.line
            ))
        };
        match section.label {
            "CERTIFICATE" => file
                .certs
                .push(CertificateDer::from_pem_slice(body).map_err(undecodable)?),
            "ENCRYPTED PRIVATE KEY" => file.encrypted_keys += 1,
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" if section.encrypted => {
                file.encrypted_keys += 1
            }
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => file
                .keys
                .push(PrivateKeyDer::from_pem_slice(body).map_err(undecodable)?),
            other => {
                if !file.other_labels.iter().any(|l| l == other) {
                    file.other_labels.push(other.to_string());
                }
            }
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
        PKCS_RSA_SHA256,
    };

    // 2026-03-01 00:00:00 UTC, a fixed "now" so that expiry tests never depend on the clock.
    const NOW: u64 = 1_772_323_200;
    const DAY: u64 = 86_400;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn now() -> SystemTime {
        at(NOW)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ca(
        cn: &str,
        issuer: Option<&rcgen::Issuer<'_, KeyPair>>,
    ) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = asn1_time(at(NOW - 365 * DAY)).to_datetime();
        params.not_after = asn1_time(at(NOW + 3650 * DAY)).to_datetime();
        let key = KeyPair::generate().unwrap();
        match issuer {
            None => CertifiedIssuer::self_signed(params, key).unwrap(),
            Some(issuer) => CertifiedIssuer::signed_by(params, key, issuer).unwrap(),
        }
    }

    struct Leaf<'a> {
        names: &'a [&'a str],
        from: u64,
        until: u64,
        eku: Vec<ExtendedKeyUsagePurpose>,
        /// Added as they are, after the ones the fields make.
        extensions: Vec<rcgen::CustomExtension>,
    }

    impl Default for Leaf<'_> {
        fn default() -> Self {
            Leaf {
                names: &["mail.example.org"],
                from: NOW - DAY,
                until: NOW + 89 * DAY,
                eku: Vec::new(),
                extensions: Vec::new(),
            }
        }
    }

    impl Leaf<'_> {
        fn signed(&self, key: &KeyPair, issuer: &rcgen::Issuer<'_, KeyPair>) -> String {
            let mut params = CertificateParams::new(names(self.names)).unwrap();
            params.distinguished_name = rcgen::DistinguishedName::new();
            if let Some(first) = self.names.first() {
                params.distinguished_name.push(DnType::CommonName, *first);
            }
            params.not_before = asn1_time(at(self.from)).to_datetime();
            params.not_after = asn1_time(at(self.until)).to_datetime();
            params.extended_key_usages = self.eku.clone();
            params.custom_extensions = self.extensions.clone();
            params.signed_by(key, issuer).unwrap().pem()
        }
    }

    /// A Let's Encrypt-shaped pair: leaf, intermediate (root not included).
    struct Pki {
        root: CertifiedIssuer<'static, KeyPair>,
        intermediate: CertifiedIssuer<'static, KeyPair>,
    }

    impl Pki {
        fn new() -> Pki {
            let root = ca("Test Root X1", None);
            let intermediate = ca("Test R11", Some(&root));
            Pki { root, intermediate }
        }

        /// (fullchain PEM, key PEM)
        fn pair(&self, leaf: Leaf<'_>) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            self.pair_with_key(leaf, &key)
        }

        fn pair_with_key(&self, leaf: Leaf<'_>, key: &KeyPair) -> (String, String) {
            let cert = leaf.signed(key, &self.intermediate);
            (
                format!("{cert}{}", self.intermediate.pem()),
                key.serialize_pem(),
            )
        }
    }

    fn validate(chain: &str, key: &str, required: &[&str]) -> Result<CertInfo, PairProblem> {
        validate_pair(chain.as_bytes(), key.as_bytes(), &names(required), now())
    }

    /// `openssl genrsa -traditional 2048` and its `openssl pkcs8 -topk8 -nocrypt` form:
    /// ring cannot generate RSA keys, and rcgen (ring) can only load PKCS#8 ones.
    const RSA_PKCS1: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEAqLp2U1JCfLEPZ8aa3QlCKsKKDfDp0inrctxG7KRhaS05O1Zy
ZX+Nhc609cjuTdz9pcYwt/iRPzDqFaq19/fZ5BzPZAvtZEguIseg340+J0zI+hVp
GfmTcAizjMy+EhqiSZlvZK/iU8Qe1GNUYr7LKIKB0rz6dv5+rVog5+adlfgXX8cf
8iB1OhmMzx5s+vgSj2cXDC+PeYOlqhll281Ke2Eiyp8RLiJypYai/le/0n0qYsTO
/cqvFYkz3WX0RPPIzjgeCgj5K8K0LWC+oqit/9JpeKxK8wZdh/wZggGNyPyOBf5E
PN+FVzArFmc4avvMEVtQfUUkh1pezUxiGMaN3QIDAQABAoIBAACBnr1H7+nOi4yf
gfN2haZPMyQw5uK55s+kwum5jI6ePh+5dgUWnubEj10gHzxIlNJHMqTlWro6fAQD
S8x/XT4GqsX9ayxJMyo+OHNd9HkgYodYQm/Q2epqJu/IkCwfEaxFiO9fv77J8IsT
8+WKoQgcFtD6aYirNtdvqnhHruK2Ufbk2hkl5DWMB4eNB/i5oa1wJoLTCxn6rUuv
QZ3/p54KOaKf9yPFAqTi1L9bHEtuTUvRfFAieHP9rfmWk9uLd550/xI8wXQvp6Pp
Ifr2KTXrnJI0EXoHy+yz9k0fOD12RvpOVor5G2eei+RbqxW0kNDZYklg5K6fnLdj
GFj2VUECgYEA1J7sWXnBK4bQEjsOP1ELFnqA/wrcP69TXIEAXMqrQSjiZwT2UJtI
8ZdorEsJRqhLYxvYkPqfOPmAIycbOmxM++deihwpuRwwIiG65FEBo787KiwI7QX7
RgLM19DmUQyuEh0QkXmB6JCa6lv25gEV7Euhf5koLHT2MEkEluD8GKkCgYEAyycP
SYHucXtv/weeQDRsBtakNRvwerdisbF9vauuQGQOV7yiHcXas4WwOwNUIoxYwC2b
Xb9UWb1F2v53tHrwyKlNm956Hrnz/Vmccu2sBc60+vv39alu8mwqemxOZl7HZzD6
emKgzwe7NET9oVSoczESlp/BxYA36mVJAdCBSBUCgYB8akZpERrc6nUkxdPPbw/q
5mJHW0aIKYLBFWdt5NYTOeZJXBj6D/O+EtgYQYw7AU2jv+6Y315+S1kUuNRw+mCN
4tRqQpKTlBACWPRwl4o7FDJ9uei7MY3YaNkOzFmJQb82MDW6unwu5zcPPiMacbYv
YA4viSJ96S8KECAUXbCGiQKBgQCAOhlGFoMAkh8w5AgZEn2VG2nuM8JoUtQywItT
asfD0OPUsTXKgRX39kw0E3fJjrh+JMtKMvf05Kjw/2ljO647mdFortZ6Cnlc0nET
gbzwtXY6bUwnfViQH4H4X+BkcTJ/icSv9wz1YDXjWiCU8jCY9MJ83D2cgb/JbUDV
qlvPuQKBgQCOk7Aje6Vn0s3i0sW9iTKM5T51AtqmxzJgFnoQXXKNxutoDGfFzUnf
SaX+sXpt1dXYt8mCK9kdQ0lgmUnC3IqVZWThOB6MXqLK593fZEYfdwVjOO9yHqjN
bQagrclPl0GZVULb/drE4UHB1tSt26aMwel9duxs9yahCN2y2jp7sA==
-----END RSA PRIVATE KEY-----
";
    const RSA_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCounZTUkJ8sQ9n
xprdCUIqwooN8OnSKety3EbspGFpLTk7VnJlf42FzrT1yO5N3P2lxjC3+JE/MOoV
qrX399nkHM9kC+1kSC4ix6DfjT4nTMj6FWkZ+ZNwCLOMzL4SGqJJmW9kr+JTxB7U
Y1RivssogoHSvPp2/n6tWiDn5p2V+Bdfxx/yIHU6GYzPHmz6+BKPZxcML495g6Wq
GWXbzUp7YSLKnxEuInKlhqL+V7/SfSpixM79yq8ViTPdZfRE88jOOB4KCPkrwrQt
YL6iqK3/0ml4rErzBl2H/BmCAY3I/I4F/kQ834VXMCsWZzhq+8wRW1B9RSSHWl7N
TGIYxo3dAgMBAAECggEAAIGevUfv6c6LjJ+B83aFpk8zJDDm4rnmz6TC6bmMjp4+
H7l2BRae5sSPXSAfPEiU0kcypOVaujp8BANLzH9dPgaqxf1rLEkzKj44c130eSBi
h1hCb9DZ6mom78iQLB8RrEWI71+/vsnwixPz5YqhCBwW0PppiKs212+qeEeu4rZR
9uTaGSXkNYwHh40H+LmhrXAmgtMLGfqtS69Bnf+nngo5op/3I8UCpOLUv1scS25N
S9F8UCJ4c/2t+ZaT24t3nnT/EjzBdC+no+kh+vYpNeuckjQRegfL7LP2TR84PXZG
+k5WivkbZ56L5FurFbSQ0NliSWDkrp+ct2MYWPZVQQKBgQDUnuxZecErhtASOw4/
UQsWeoD/Ctw/r1NcgQBcyqtBKOJnBPZQm0jxl2isSwlGqEtjG9iQ+p84+YAjJxs6
bEz7516KHCm5HDAiIbrkUQGjvzsqLAjtBftGAszX0OZRDK4SHRCReYHokJrqW/bm
ARXsS6F/mSgsdPYwSQSW4PwYqQKBgQDLJw9Jge5xe2//B55ANGwG1qQ1G/B6t2Kx
sX29q65AZA5XvKIdxdqzhbA7A1QijFjALZtdv1RZvUXa/ne0evDIqU2b3noeufP9
WZxy7awFzrT6+/f1qW7ybCp6bE5mXsdnMPp6YqDPB7s0RP2hVKhzMRKWn8HFgDfq
ZUkB0IFIFQKBgHxqRmkRGtzqdSTF089vD+rmYkdbRogpgsEVZ23k1hM55klcGPoP
874S2BhBjDsBTaO/7pjfXn5LWRS41HD6YI3i1GpCkpOUEAJY9HCXijsUMn256Lsx
jdho2Q7MWYlBvzYwNbq6fC7nNw8+Ixpxti9gDi+JIn3pLwoQIBRdsIaJAoGBAIA6
GUYWgwCSHzDkCBkSfZUbae4zwmhS1DLAi1Nqx8PQ49SxNcqBFff2TDQTd8mOuH4k
y0oy9/TkqPD/aWM7rjuZ0Wiu1noKeVzScROBvPC1djptTCd9WJAfgfhf4GRxMn+J
xK/3DPVgNeNaIJTyMJj0wnzcPZyBv8ltQNWqW8+5AoGBAI6TsCN7pWfSzeLSxb2J
MozlPnUC2qbHMmAWehBdco3G62gMZ8XNSd9Jpf6xem3V1di3yYIr2R1DSWCZScLc
ipVlZOE4Hoxeosrn3d9kRh93BWM473IeqM1tBqCtyU+XQZlVQtv92sThQcHW1K3b
pozB6X127Gz3JqEI3bLaOnuw
-----END PRIVATE KEY-----
";
    /// `openssl ecparam -name secp384r1 -genkey -noout` (SEC1) and its PKCS#8 form.
    const P384_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MIGkAgEBBDC+ZydsRSExhL+kfuvCBDyqP5nh7R+WWa8OV8cq2VeObIg/exu7EClf
0lMfmodrQU6gBwYFK4EEACKhZANiAATqr/HivEn3kH/078P1U2vtk3NdLnSGaqGm
HsC+9ZUMjA/zVYuhY70LGp67AaiRXO0g0MRww4pEf3NIGzlgmdSyUbNrNvvaKbQm
+O+FpFLGDJICykqQTtB6LwpPn7GAjos=
-----END EC PRIVATE KEY-----
";
    const P384_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDC+ZydsRSExhL+kfuvC
BDyqP5nh7R+WWa8OV8cq2VeObIg/exu7EClf0lMfmodrQU6hZANiAATqr/HivEn3
kH/078P1U2vtk3NdLnSGaqGmHsC+9ZUMjA/zVYuhY70LGp67AaiRXO0g0MRww4pE
f3NIGzlgmdSyUbNrNvvaKbQm+O+FpFLGDJICykqQTtB6LwpPn7GAjos=
-----END PRIVATE KEY-----
";
    /// `openssl ecparam -name prime256v1 -genkey -noout` (SEC1) and its PKCS#8 form.
    const P256_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIMIdz6YEWx28sfqFrd8gr1p65BEHz1aINHHeQWgqV7HjoAoGCCqGSM49
AwEHoUQDQgAE9AyRu78B28RwRtPNKAS50xRFzp2PN29SGDMRHWOthsLgd/XzbIaI
0eC096Q/bspdezajQxzOoPCSjG4P7ZPYCA==
-----END EC PRIVATE KEY-----
";
    const P256_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgwh3PpgRbHbyx+oWt
3yCvWnrkEQfPVog0cd5BaCpXseOhRANCAAT0DJG7vwHbxHBG080oBLnTFEXOnY83
b1IYMxEdY62GwuB39fNshojR4LT3pD9uyl17NqNDHM6g8JKMbg/tk9gI
-----END PRIVATE KEY-----
";
    /// `openssl ecparam -name secp521r1 -genkey -noout`: P-521, which ring cannot sign with.
    const P521_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MIHcAgEBBEIBo2y1UwPNDaUrvjZozElEODTZxnv5/87EGDh1o81Bsf35TFqgmW+l
d2g8oFlwQVr02GkdAyTvV9/raDQcd4YJWbOgBwYFK4EEACOhgYkDgYYABADC567R
Ka7d/rOQp5tTqqZgnuLYqxNvJCrHMT0O5XSrHjZIs8jmEk+3ezT2zJCWwIbdXj7C
YvOKy9uiPjXRHuJx7QDKt0cJOTUAJAG6E9BLnhfJxTafz2tIDExQwvEVZ0wLDbCj
Pi0fllo6KCqH9+tSQW9jGHjSTDqGYl+zsonNQ2XPgw==
-----END EC PRIVATE KEY-----
";
    /// `openssl pkey -aes256` of the P-256 key above.
    const ENCRYPTED_PKCS8: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----
MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAhHEjmtXN6hBAICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEL73L0r6em1XkBwqlbHOMm4EgZB0
cX1132LtMaa9Q1i/Wpfjjz15t2kusIJQ7wbu8HTeaBsNjKX3Ixh7r48b4oYOH97c
2XaqjY6I3upShbn7o0amjmSXmuJY+aPpYqKoZTyDwNSavU7pA/wNsY6oPld/CuhQ
x9ivbaVB7CCp9WdcP5CSj2TYAayOWm1Ajup8u3M0NysxMRFANxFdcl+TKtQdjqs=
-----END ENCRYPTED PRIVATE KEY-----
";
    /// The shape of `openssl rsa -aes128 -traditional` (headers inside the section).
    const ENCRYPTED_TRADITIONAL: &str = "-----BEGIN RSA PRIVATE KEY-----
Proc-Type: 4,ENCRYPTED
DEK-Info: AES-128-CBC,2D4AE491A2FA5B2F7E88F7E2D2D0A020

bQagrclPl0GZVULb/drE4UHB1tSt26aMwel9duxs9yahCN2y2jp7sA==
-----END RSA PRIVATE KEY-----
";

    // --- accepted pairs -------------------------------------------------------------------

    #[test]
    fn accepts_a_fullchain_and_reports_what_it_holds() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf {
            names: &["mail.example.org", "example.org"],
            ..Leaf::default()
        });
        let info = validate(&chain, &key, &["mail.example.org", "example.org"]).unwrap();
        assert_eq!(info.subject, "CN=mail.example.org");
        assert_eq!(info.issuer, "CN=Test R11");
        assert_eq!(info.names, names(&["mail.example.org", "example.org"]));
        assert_eq!(info.not_before, at(NOW - DAY));
        assert_eq!(info.not_after, at(NOW + 89 * DAY));
        assert_eq!(info.chain_len, 2);
        assert_eq!(
            info.not_after.duration_since(info.not_before).unwrap(),
            Duration::from_secs(90 * DAY)
        );
        assert_eq!(info.days_left(now()), 89);
        let leaf_der = CertificateDer::from_pem_slice(chain.as_bytes()).unwrap();
        assert_eq!(info.sha256_fingerprint, leaf_fingerprint_of_der(&leaf_der));
    }

    #[test]
    fn accepts_a_chain_with_the_root_too() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        let chain = format!("{chain}{}", pki.root.pem());
        assert_eq!(
            validate(&chain, &key, &["mail.example.org"])
                .unwrap()
                .chain_len,
            3
        );
    }

    #[test]
    fn no_required_names_checks_everything_else() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        assert!(validate(&chain, &key, &[]).is_ok());
    }

    #[test]
    fn accepts_a_combined_key_and_chain_file_as_both_arguments() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        let combined = format!("{key}{chain}");
        assert_eq!(
            validate(&combined, &combined, &["mail.example.org"])
                .unwrap()
                .chain_len,
            2
        );
    }

    #[test]
    fn accepts_crlf_line_ends_and_explanatory_text() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        let chain = format!(
            "subject=CN=mail.example.org\n{}",
            chain.replace('\n', "\r\n")
        );
        assert!(validate(&chain, &key, &["mail.example.org"]).is_ok());
    }

    #[test]
    fn accepts_a_byte_order_mark() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        let chain = format!("\u{feff}{chain}");
        let key = format!("\u{feff}{key}");
        assert!(validate(&chain, &key, &["mail.example.org"]).is_ok());
    }

    #[test]
    fn fingerprint_is_lowercase_hex_sha256() {
        assert_eq!(
            leaf_fingerprint_of_der(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    // --- key types ----------------------------------------------------------------------------

    fn pair_for_pkcs8(pkcs8_pem: &str, alg: &'static rcgen::SignatureAlgorithm) -> String {
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(pkcs8_pem, alg).unwrap();
        Pki::new().pair_with_key(Leaf::default(), &key).0
    }

    #[test]
    fn accepts_rsa_keys_in_pkcs1_and_pkcs8() {
        let chain = pair_for_pkcs8(RSA_PKCS8, &PKCS_RSA_SHA256);
        assert!(validate(&chain, RSA_PKCS1, &["mail.example.org"]).is_ok());
        assert!(validate(&chain, RSA_PKCS8, &["mail.example.org"]).is_ok());
    }

    #[test]
    fn accepts_ecdsa_keys_in_sec1_and_pkcs8() {
        let chain = pair_for_pkcs8(P384_PKCS8, &PKCS_ECDSA_P384_SHA384);
        assert!(validate(&chain, P384_SEC1, &["mail.example.org"]).is_ok());
        assert!(validate(&chain, P384_PKCS8, &["mail.example.org"]).is_ok());
        let chain = pair_for_pkcs8(P256_PKCS8, &PKCS_ECDSA_P256_SHA256);
        assert!(validate(&chain, P256_SEC1, &["mail.example.org"]).is_ok());
        assert!(validate(&chain, P256_PKCS8, &["mail.example.org"]).is_ok());
    }

    #[test]
    fn accepts_generated_p384_and_ed25519_keys() {
        let pki = Pki::new();
        for alg in [&PKCS_ECDSA_P384_SHA384, &PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let (chain, key) = pki.pair_with_key(Leaf::default(), &key);
            assert!(
                validate(&chain, &key, &["mail.example.org"]).is_ok(),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn rejects_an_rsa_key_that_belongs_to_another_certificate() {
        let chain = pair_for_pkcs8(P256_PKCS8, &PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            validate(&chain, RSA_PKCS1, &[]),
            Err(PairProblem::KeyMismatch)
        );
    }

    #[test]
    fn rejects_p521_keys_which_ring_cannot_use() {
        let chain = pair_for_pkcs8(P256_PKCS8, &PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            validate(&chain, P521_SEC1, &[]),
            Err(PairProblem::UnsupportedKey)
        );
    }

    #[test]
    fn rejects_a_key_whose_der_is_garbage() {
        let chain = pair_for_pkcs8(P256_PKCS8, &PKCS_ECDSA_P256_SHA256);
        let key = "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n";
        assert_eq!(validate(&chain, key, &[]), Err(PairProblem::UnsupportedKey));
    }

    #[test]
    fn rejects_encrypted_keys_of_both_styles() {
        let chain = pair_for_pkcs8(P256_PKCS8, &PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            validate(&chain, ENCRYPTED_PKCS8, &[]),
            Err(PairProblem::EncryptedKey)
        );
        assert_eq!(
            validate(&chain, ENCRYPTED_TRADITIONAL, &[]),
            Err(PairProblem::EncryptedKey)
        );
    }

    #[test]
    fn rejects_two_keys_in_the_key_file() {
        let chain = pair_for_pkcs8(P256_PKCS8, &PKCS_ECDSA_P256_SHA256);
        let keys = format!("{P256_PKCS8}{RSA_PKCS1}");
        assert_eq!(validate(&chain, &keys, &[]), Err(PairProblem::KeyCount(2)));
        let keys = format!("{P256_PKCS8}{ENCRYPTED_PKCS8}");
        assert_eq!(validate(&chain, &keys, &[]), Err(PairProblem::KeyCount(2)));
    }

    // --- key and chain do not belong together ----------------------------------------------------

    #[test]
    fn rejects_the_wrong_key() {
        let pki = Pki::new();
        let (chain, _) = pki.pair(Leaf::default());
        let (_, other_key) = pki.pair(Leaf::default());
        assert_eq!(
            validate(&chain, &other_key, &["mail.example.org"]),
            Err(PairProblem::KeyMismatch)
        );
    }

    #[test]
    fn new_chain_with_old_key_is_a_mismatch_that_may_settle() {
        let pki = Pki::new();
        let (_, old_key) = pki.pair(Leaf::default());
        let (new_chain, _) = pki.pair(Leaf::default());
        let problem = validate(&new_chain, &old_key, &["mail.example.org"]).unwrap_err();
        assert_eq!(problem, PairProblem::KeyMismatch);
        assert!(problem.may_be_in_progress());
    }

    #[test]
    fn chain_pem_instead_of_fullchain_is_named() {
        let pki = Pki::new();
        let (_, key) = pki.pair(Leaf::default());
        // certbot's chain.pem: the intermediate alone.
        let problem = validate(&pki.intermediate.pem(), &key, &["mail.example.org"]).unwrap_err();
        assert_eq!(
            problem,
            PairProblem::LeafIsCa {
                subject: "CN=Test R11".to_string()
            }
        );
        assert!(!problem.may_be_in_progress());
    }

    #[test]
    fn cert_pem_instead_of_fullchain_is_named() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        let leaf_only = &chain[..chain.find("-----END CERTIFICATE-----").unwrap() + 26];
        assert_eq!(
            validate(leaf_only, &key, &["mail.example.org"]),
            Err(PairProblem::MissingIntermediate {
                issuer: "CN=Test R11".to_string()
            })
        );
    }

    #[test]
    fn rejects_a_chain_out_of_order() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        let with_root_in_the_middle = chain.replacen(
            "-----END CERTIFICATE-----\n",
            &format!("-----END CERTIFICATE-----\n{}", pki.root.pem()),
            1,
        );
        assert_eq!(
            validate(&with_root_in_the_middle, &key, &["mail.example.org"]),
            Err(PairProblem::ChainOutOfOrder { position: 1 })
        );
        let (chain, key) = pki.pair(Leaf::default());
        let leaf_end = chain.find("-----END CERTIFICATE-----\n").unwrap() + 26;
        let reversed = format!("{}{}", &chain[leaf_end..], &chain[..leaf_end]);
        assert_eq!(
            validate(&reversed, &key, &["mail.example.org"]),
            Err(PairProblem::LeafIsCa {
                subject: "CN=Test R11".to_string()
            })
        );
        let with_foreign_third = format!("{chain}{}", ca("Other Root", None).pem());
        assert_eq!(
            validate(&with_foreign_third, &key, &["mail.example.org"]),
            Err(PairProblem::ChainOutOfOrder { position: 2 })
        );
    }

    #[test]
    fn key_first_in_the_chain_file_and_cert_in_the_key_file_are_swapped() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        assert_eq!(
            validate(&key, &chain, &["mail.example.org"]),
            Err(PairProblem::Swapped)
        );
    }

    #[test]
    fn key_file_with_only_certificates_has_no_key() {
        let pki = Pki::new();
        let (chain, _) = pki.pair(Leaf::default());
        assert_eq!(
            validate(&chain, &chain, &[]),
            Err(PairProblem::NoPrivateKey { found: vec![] })
        );
    }

    // --- time -------------------------------------------------------------------------------------

    #[test]
    fn rejects_an_expired_certificate() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf {
            from: NOW - 90 * DAY,
            until: NOW - 1,
            ..Leaf::default()
        });
        assert_eq!(
            validate(&chain, &key, &["mail.example.org"]),
            Err(PairProblem::Expired {
                not_after: at(NOW - 1)
            })
        );
    }

    #[test]
    fn the_last_second_is_still_valid() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf {
            until: NOW,
            ..Leaf::default()
        });
        let info = validate(&chain, &key, &["mail.example.org"]).unwrap();
        assert_eq!(info.days_left(now()), 0);
        assert_eq!(info.days_left(at(NOW + 1)), -1);
    }

    #[test]
    fn rejects_a_certificate_not_yet_valid() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf {
            from: NOW + 3600,
            until: NOW + 90 * DAY,
            ..Leaf::default()
        });
        assert_eq!(
            validate(&chain, &key, &["mail.example.org"]),
            Err(PairProblem::NotYetValid {
                not_before: at(NOW + 3600)
            })
        );
    }

    #[test]
    fn days_left_rounds_down() {
        let info = CertInfo {
            subject: String::new(),
            issuer: String::new(),
            names: vec![],
            not_before: at(NOW - DAY),
            not_after: at(NOW + 2 * DAY - 1),
            sha256_fingerprint: String::new(),
            chain_len: 1,
        };
        assert_eq!(info.days_left(now()), 1);
        assert_eq!(info.days_left(at(NOW + 3 * DAY)), -2);
        let backwards = CertInfo {
            not_before: at(NOW + DAY),
            not_after: at(NOW),
            ..info
        };
        assert_eq!(
            backwards
                .not_after
                .duration_since(backwards.not_before)
                .unwrap_or_default(),
            Duration::ZERO
        );
    }

    #[test]
    fn formats_times_in_utc() {
        assert_eq!(format_utc(at(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(at(NOW)), "2026-03-01 00:00:00 UTC");
        assert_eq!(format_utc(at(1_767_323_045)), "2026-01-02 03:04:05 UTC");
        assert_eq!(format_utc(at(951_782_400)), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(at(253_402_300_799)), "9999-12-31 23:59:59 UTC");
        assert_eq!(
            format_utc(UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31 23:59:59 UTC"
        );
    }

    // --- names --------------------------------------------------------------------------------

    #[test]
    fn rejects_a_certificate_for_other_names() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf {
            names: &["a.example", "b.example"],
            ..Leaf::default()
        });
        assert_eq!(
            validate(&chain, &key, &["a.example", "mail.example.org"]),
            Err(PairProblem::NameNotCovered {
                name: "mail.example.org".to_string(),
                covered: names(&["a.example", "b.example"])
            })
        );
    }

    #[test]
    fn wildcards_cover_exactly_one_label() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf {
            names: &["*.Example.org"],
            ..Leaf::default()
        });
        assert!(validate(&chain, &key, &["mail.example.org", "SMTP.EXAMPLE.ORG."]).is_ok());
        for name in ["example.org", "a.b.example.org", "mail.example.com"] {
            assert!(
                matches!(
                    validate(&chain, &key, &[name]),
                    Err(PairProblem::NameNotCovered { .. })
                ),
                "{name} must not be covered"
            );
        }
    }

    #[test]
    fn name_matching_rules() {
        assert!(name_covers("Mail.Example.Org", "mail.example.org"));
        assert!(name_covers("mail.example.org.", "mail.example.org"));
        assert!(name_covers("*.example.org", "mail.example.org"));
        assert!(name_covers("*.example.org", "*.example.org"));
        assert!(!name_covers("*.example.org", ".example.org"));
        assert!(!name_covers("*.example.org", "example.org"));
        assert!(!name_covers("*.example.org", "a.b.example.org"));
        assert!(!name_covers("m*.example.org", "mail.example.org"));
        assert!(!name_covers("mail.*.org", "mail.example.org"));
        assert!(!name_covers("*.", "a."));
        assert!(!name_covers("mail.example.org", "*.example.org"));
    }

    #[test]
    fn the_common_name_counts_only_without_dns_sans() {
        let pki = Pki::new();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "mail.example.org");
        params.not_before = asn1_time(at(NOW - DAY)).to_datetime();
        params.not_after = asn1_time(at(NOW + DAY)).to_datetime();
        let chain = format!(
            "{}{}",
            params.signed_by(&key, &pki.intermediate).unwrap().pem(),
            pki.intermediate.pem()
        );
        let info = validate(&chain, &key.serialize_pem(), &["mail.example.org"]).unwrap();
        assert_eq!(info.names, names(&["mail.example.org"]));

        // A DNS SAN present: the CN no longer counts.
        params.subject_alt_names = vec![rcgen::SanType::DnsName(
            "other.example.org".try_into().unwrap(),
        )];
        let chain = format!(
            "{}{}",
            params.signed_by(&key, &pki.intermediate).unwrap().pem(),
            pki.intermediate.pem()
        );
        assert_eq!(
            validate(&chain, &key.serialize_pem(), &["mail.example.org"]),
            Err(PairProblem::NameNotCovered {
                name: "mail.example.org".to_string(),
                covered: names(&["other.example.org"])
            })
        );
    }

    #[test]
    fn rejects_a_client_only_certificate() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf {
            eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            ..Leaf::default()
        });
        assert_eq!(
            validate(&chain, &key, &["mail.example.org"]),
            Err(PairProblem::NotForServers)
        );
        let (chain, key) = pki.pair(Leaf {
            eku: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            ..Leaf::default()
        });
        assert!(validate(&chain, &key, &["mail.example.org"]).is_ok());
    }

    // --- the placeholder ------------------------------------------------------------------------

    #[test]
    fn the_placeholder_is_accepted_for_its_names() {
        let wanted = names(&["mail.example.org", "example.org"]);
        let (chain, key) = self_signed_placeholder(&wanted, now());
        let info = validate_pair(chain.as_bytes(), key.as_bytes(), &wanted, now()).unwrap();
        assert_eq!(
            info.subject,
            "CN=mail.example.org, O=postmaster placeholder"
        );
        assert_eq!(info.subject, info.issuer);
        assert_eq!(info.names, wanted);
        assert_eq!(info.chain_len, 1);
        assert_eq!(info.not_before, at(NOW - 3600));
        assert_eq!(
            info.not_after.duration_since(info.not_before).unwrap(),
            Duration::from_secs(90 * DAY)
        );
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn the_placeholder_is_valid_from_an_hour_ago_and_expires() {
        let wanted = names(&["mail.example.org"]);
        let (chain, key) = self_signed_placeholder(&wanted, now());
        let check = |t| validate_pair(chain.as_bytes(), key.as_bytes(), &wanted, t);
        assert!(check(at(NOW - 3600)).is_ok());
        assert!(matches!(
            check(at(NOW - 3601)),
            Err(PairProblem::NotYetValid { .. })
        ));
        assert!(matches!(
            check(at(NOW + 90 * DAY)),
            Err(PairProblem::Expired { .. })
        ));
    }

    #[test]
    fn placeholders_differ_each_time() {
        let wanted = names(&["mail.example.org"]);
        let a = self_signed_placeholder(&wanted, now());
        let b = self_signed_placeholder(&wanted, now());
        assert_ne!(a, b);
    }

    #[test]
    fn a_placeholder_without_names_or_with_unencodable_ones_still_works() {
        let (chain, key) = self_signed_placeholder(&[], now());
        let info = validate_pair(chain.as_bytes(), key.as_bytes(), &[], now()).unwrap();
        assert_eq!(
            info.subject,
            "CN=postmaster placeholder, O=postmaster placeholder"
        );
        let wanted = names(&["bücher.example", "mail.example.org"]);
        let (chain, key) = self_signed_placeholder(&wanted, now());
        assert_eq!(
            validate_pair(chain.as_bytes(), key.as_bytes(), &wanted, now()),
            Err(PairProblem::NameNotCovered {
                name: "bücher.example".to_string(),
                covered: names(&["mail.example.org"])
            })
        );
    }

    // --- broken files -----------------------------------------------------------------------------

    #[test]
    fn empty_files_may_be_in_progress() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        assert_eq!(validate("", &key, &[]), Err(PairProblem::ChainFileEmpty));
        assert_eq!(
            validate(" \n\n", &key, &[]),
            Err(PairProblem::ChainFileEmpty)
        );
        assert_eq!(validate(&chain, "", &[]), Err(PairProblem::KeyFileEmpty));
        assert!(PairProblem::ChainFileEmpty.may_be_in_progress());
    }

    #[test]
    fn a_file_cut_anywhere_is_a_clear_error_and_never_a_panic() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        let required = names(&["mail.example.org"]);
        // Up to the last line: cutting only the final line break leaves a complete file.
        for cut in 0..chain.trim_end().len() {
            let result = validate_pair(&chain.as_bytes()[..cut], key.as_bytes(), &required, now());
            let problem = result.expect_err("a cut chain must not pass");
            assert!(problem.may_be_in_progress(), "cut at {cut}: {problem}");
        }
        for cut in 0..key.trim_end().len() {
            let result = validate_pair(chain.as_bytes(), &key.as_bytes()[..cut], &required, now());
            let problem = result.expect_err("a cut key must not pass");
            assert!(problem.may_be_in_progress(), "cut at {cut}: {problem}");
        }
    }

    /// Line number (from 1) of the line that starts at byte `at` of `text`.
    fn line_at(text: &str, at: usize) -> usize {
        text[..at].matches('\n').count() + 1
    }

    #[test]
    fn a_chain_cut_in_the_second_certificate_says_where() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        let second = chain.find("-----END CERTIFICATE-----\n").unwrap() + 26;
        let line = line_at(&chain, second);
        let cut = |len: usize| validate(&chain[..len], &key, &[]);
        assert_eq!(
            cut(second + 100),
            Err(PairProblem::ChainCutShort(format!(
                "the CERTIFICATE that begins on line {line} has no -----END line"
            )))
        );
        assert_eq!(
            cut(second + 8),
            Err(PairProblem::ChainCutShort(format!(
                "line {line} is an incomplete PEM marker"
            )))
        );
        assert_eq!(
            cut(second + 18),
            Err(PairProblem::ChainCutShort(format!(
                "line {line} is an incomplete -----BEGIN line"
            )))
        );
        let last = chain.rfind("-----END").unwrap();
        assert_eq!(
            cut(last + 12),
            Err(PairProblem::ChainCutShort(format!(
                "line {} is an incomplete -----END line",
                line_at(&chain, last)
            )))
        );
        assert_eq!(
            cut(last + 2),
            Err(PairProblem::ChainCutShort(format!(
                "line {} is an incomplete PEM marker",
                line_at(&chain, last)
            )))
        );
    }

    #[test]
    fn binary_garbage_is_not_pem() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        let garbage: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        assert!(matches!(
            validate_pair(&garbage, key.as_bytes(), &[], now()),
            Err(PairProblem::ChainNotPem(s)) if s.starts_with("it holds binary data")
        ));
        assert!(matches!(
            validate_pair(chain.as_bytes(), &garbage, &[], now()),
            Err(PairProblem::KeyNotPem(s)) if s.starts_with("it holds binary data")
        ));
        // A DER certificate, as some CAs hand out.
        let der = CertificateDer::from_pem_slice(chain.as_bytes()).unwrap();
        assert!(matches!(
            validate_pair(&der, key.as_bytes(), &[], now()),
            Err(PairProblem::ChainNotPem(_))
        ));
    }

    #[test]
    fn text_without_sections_is_not_pem() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        assert_eq!(
            validate("hello world\n", &key, &[]),
            Err(PairProblem::ChainNotPem(
                "it has no -----BEGIN CERTIFICATE----- line".to_string()
            ))
        );
        assert_eq!(
            validate(&chain, "hello world\n", &[]),
            Err(PairProblem::KeyNotPem(
                "it has no -----BEGIN PRIVATE KEY----- line".to_string()
            ))
        );
    }

    #[test]
    fn malformed_structure_is_not_pem() {
        let pki = Pki::new();
        let (chain, key) = pki.pair(Leaf::default());
        let nested = chain.replacen("-----END CERTIFICATE-----\n", "", 1);
        let line = line_at(&nested, nested.rfind("-----BEGIN").unwrap());
        assert_eq!(
            validate(&nested, &key, &[]),
            Err(PairProblem::ChainNotPem(format!(
                "line {line} begins a CERTIFICATE inside the CERTIFICATE that begins on line 1"
            )))
        );
        let mismatched =
            chain.replacen("-----END CERTIFICATE-----", "-----END PRIVATE KEY-----", 1);
        assert!(matches!(
            validate(&mismatched, &key, &[]),
            Err(PairProblem::ChainNotPem(s)) if s.contains("ends a PRIVATE KEY, but the section that begins on line 1 is a CERTIFICATE")
        ));
        let stray_end = format!("-----END CERTIFICATE-----\n{chain}");
        assert_eq!(
            validate(&stray_end, &key, &[]),
            Err(PairProblem::ChainNotPem(
                "line 1 ends a CERTIFICATE that never began".to_string()
            ))
        );
        let bad_base64 = chain.replacen('M', "!", 1);
        assert_eq!(
            validate(&bad_base64, &key, &[]),
            Err(PairProblem::ChainNotPem(
                "the CERTIFICATE that begins on line 1 is not valid base64".to_string()
            ))
        );
    }

    /// A SAN extension the parser refuses (here: two of them) refuses the pair with
    /// the parser's reason, instead of falling back to the CN.
    #[test]
    fn a_leaf_whose_names_cannot_be_read() {
        let pki = Pki::new();
        // subjectAltName (2.5.29.17) again: SEQUENCE { dNSName "a.example" }.
        let mut second = b"\x30\x0b\x82\x09".to_vec();
        second.extend_from_slice(b"a.example");
        let (chain, key) = pki.pair(Leaf {
            extensions: vec![rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 17],
                second,
            )],
            ..Leaf::default()
        });
        assert_eq!(
            validate(&chain, &key, &["mail.example.org"]),
            Err(PairProblem::BadCertificate {
                index: 1,
                reason: X509Error::DuplicateExtensions.to_string()
            })
        );
    }

    #[test]
    fn a_certificate_section_that_is_not_x509() {
        let pki = Pki::new();
        let (_, key) = pki.pair(Leaf::default());
        let chain = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            validate(chain, &key, &[]),
            Err(PairProblem::BadCertificate { index: 1, .. })
        ));
    }

    #[test]
    fn other_sections_are_named_when_nothing_useful_is_found() {
        let pki = Pki::new();
        let (_, key) = pki.pair(Leaf::default());
        let csr =
            "-----BEGIN CERTIFICATE REQUEST-----\naGVsbG8=\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(
            validate(csr, &key, &[]),
            Err(PairProblem::NoCertificate {
                found: vec!["CERTIFICATE REQUEST".to_string()]
            })
        );
        // The key alone, with no certificate in the key file: not a swap.
        assert_eq!(
            validate(&key, &key, &[]),
            Err(PairProblem::NoCertificate { found: vec![] })
        );
    }

    // --- what admins read -----------------------------------------------------------------------

    #[test]
    fn every_problem_text() {
        let t = |p: PairProblem| p.to_string();
        let halfway = "(a writer may still be halfway: waiting for it to be written)";
        assert_eq!(
            t(PairProblem::ChainFileEmpty),
            format!("the chain file is empty {halfway}")
        );
        assert_eq!(
            t(PairProblem::KeyFileEmpty),
            format!("the key file is empty {halfway}")
        );
        assert_eq!(
            t(PairProblem::ChainCutShort(
                "the CERTIFICATE that begins on line 11 has no -----END line".into()
            )),
            "the chain file is cut short: the CERTIFICATE that begins on line 11 has no -----END line \
             (a writer may still be halfway: waiting for it to be complete)"
        );
        assert_eq!(
            t(PairProblem::KeyCutShort(
                "line 3 is an incomplete PEM marker".into()
            )),
            "the key file is cut short: line 3 is an incomplete PEM marker \
             (a writer may still be halfway: waiting for it to be complete)"
        );
        assert_eq!(
            t(PairProblem::ChainNotPem(
                "it has no -----BEGIN CERTIFICATE----- line".into()
            )),
            "the chain file is not PEM: it has no -----BEGIN CERTIFICATE----- line"
        );
        assert_eq!(
            t(PairProblem::KeyNotPem("it holds binary data".into())),
            "the key file is not PEM: it holds binary data"
        );
        assert_eq!(
            t(PairProblem::NoCertificate { found: vec![] }),
            "no certificate in the chain file"
        );
        assert_eq!(
            t(PairProblem::NoCertificate {
                found: vec!["CERTIFICATE REQUEST".into(), "X509 CRL".into()]
            }),
            "no certificate in the chain file (it holds: CERTIFICATE REQUEST, X509 CRL)"
        );
        assert_eq!(
            t(PairProblem::NoPrivateKey { found: vec![] }),
            "no private key in the key file"
        );
        assert_eq!(
            t(PairProblem::NoPrivateKey {
                found: vec!["PUBLIC KEY".into()]
            }),
            "no private key in the key file (it holds: PUBLIC KEY)"
        );
        assert_eq!(
            t(PairProblem::Swapped),
            "the chain file holds a private key and the key file holds certificates: the two paths are swapped"
        );
        assert_eq!(
            t(PairProblem::EncryptedKey),
            "the private key is encrypted with a passphrase: postfix and dovecot need it unencrypted \
             (decrypt it with `openssl pkey -in KEY -out NEWKEY`)"
        );
        assert_eq!(
            t(PairProblem::KeyCount(2)),
            "the key file holds 2 private keys: it must hold exactly one, the certificate's"
        );
        assert_eq!(
            t(PairProblem::UnsupportedKey),
            "unsupported private key type: use RSA (2048 to 8192 bits), ECDSA P-256 or P-384, or Ed25519"
        );
        assert_eq!(
            t(PairProblem::BadCertificate {
                index: 2,
                reason: "Parsing Error: InvalidCertificate".into()
            }),
            "certificate 2 in the chain file cannot be read: Parsing Error: InvalidCertificate"
        );
        assert_eq!(
            t(PairProblem::KeyMismatch),
            "the private key does not match the certificate (a writer may still be halfway: waiting for the pair to settle)"
        );
        assert_eq!(
            t(PairProblem::LeafIsCa {
                subject: "CN=R11, O=Let's Encrypt, C=US".into()
            }),
            "the first certificate in the chain file is a CA certificate (CN=R11, O=Let's Encrypt, C=US), \
             not this server's: the chain file must start with the server certificate (use fullchain.pem, not chain.pem)"
        );
        assert_eq!(
            t(PairProblem::ChainOutOfOrder { position: 1 }),
            "the chain is out of order: certificate 2 did not issue certificate 1 \
             (the server certificate comes first, then each certificate's issuer)"
        );
        assert_eq!(
            t(PairProblem::MissingIntermediate {
                issuer: "CN=R11".into()
            }),
            "the chain file holds only the server certificate, not its issuer's (CN=R11): use the full chain \
             (fullchain.pem, not cert.pem; for a private CA, append the CA certificate)"
        );
        assert_eq!(
            t(PairProblem::NotYetValid {
                not_before: at(1_767_323_045)
            }),
            "the certificate is not valid until 2026-01-02 03:04:05 UTC (is this host's clock right?)"
        );
        assert_eq!(
            t(PairProblem::Expired {
                not_after: at(1_767_323_045)
            }),
            "the certificate expired on 2026-01-02 03:04:05 UTC: renew it"
        );
        assert_eq!(
            t(PairProblem::NotForServers),
            "the certificate is not for TLS servers: its extended key usage lacks serverAuth"
        );
        assert_eq!(
            t(PairProblem::NameNotCovered {
                name: "mail.example.org".into(),
                covered: vec!["a.example".into(), "b.example".into()]
            }),
            "the certificate does not cover mail.example.org (it covers: a.example, b.example)"
        );
        assert_eq!(
            t(PairProblem::NameNotCovered {
                name: "mail.example.org".into(),
                covered: vec![]
            }),
            "the certificate does not cover mail.example.org (it covers no DNS name)"
        );
    }
}
