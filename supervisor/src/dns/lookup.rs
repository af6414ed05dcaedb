//! Asking DNS, through the host's resolver (`/etc/resolv.conf`), with
//! hickory-resolver. A fresh resolver per round: nothing is answered from a cache
//! of ours, so a record published a second ago is seen as soon as the resolver
//! the host uses sees it.

use std::net::IpAddr;

use hickory_resolver::Resolver;
use hickory_resolver::config::ResolveHosts;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use super::{Found, NoAnswer, Purpose, RType, Record, Verdict};
use crate::config::Config;
use crate::dkim;

pub(crate) struct Dns {
    resolver: Resolver<TokioRuntimeProvider>,
}

/// Why DNS cannot be asked at all (as opposed to a question without an answer,
/// which is a [`Found`] error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    #[error("cannot read the resolver configuration (/etc/resolv.conf): {0}")]
    Configuration(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot set up a resolver: {0}")]
    Setup(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Dns {
    /// A resolver configured as the host's.
    pub(crate) fn system() -> Result<Dns, LookupError> {
        let mut builder =
            Resolver::builder_tokio().map_err(|e| LookupError::Configuration(Box::new(e)))?;
        // What the world sees is in DNS: /etc/hosts often names this very host
        // (127.0.1.1) and must not answer for it.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        let resolver = builder
            .build()
            .map_err(|e| LookupError::Setup(Box::new(e)))?;
        Ok(Dns { resolver })
    }

    /// The records of `rtype` at `name`, in presentation form (see [`Found`]).
    /// No such name or no such record is an empty list, not an error.
    pub(crate) async fn find(&self, name: &str, rtype: RType) -> Found {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let answer = match rtype {
            RType::A | RType::AAAA => self.resolver.lookup_ip(fqdn.as_str()).await.map(|l| {
                l.iter()
                    .filter(|ip| ip.is_ipv4() == (rtype == RType::A))
                    .map(|ip| ip.to_string())
                    .collect()
            }),
            RType::PTR => {
                let rtype = hickory_resolver::proto::rr::RecordType::PTR;
                self.resolver
                    .lookup(fqdn.as_str(), rtype)
                    .await
                    .map(|l| data_of(l.answers().iter().map(|r| &r.data)))
            }
            RType::TXT | RType::MX | RType::SRV => {
                let rtype = match rtype {
                    RType::TXT => hickory_resolver::proto::rr::RecordType::TXT,
                    RType::MX => hickory_resolver::proto::rr::RecordType::MX,
                    _ => hickory_resolver::proto::rr::RecordType::SRV,
                };
                self.resolver
                    .lookup(fqdn.as_str(), rtype)
                    .await
                    .map(|l| data_of(l.answers().iter().map(|r| &r.data)))
            }
        };
        match answer {
            Ok(found) => Ok(found),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(NoAnswer(e)),
        }
    }

    /// The TXT records at a DKIM selector's name, judged against its key.
    pub(crate) async fn seen(&self, domain: &str, key: &dkim::Key) -> dkim::Seen {
        match self.find(&key.record_name(domain), RType::TXT).await {
            Ok(found) => dkim::judge(key, &found),
            Err(why) => dkim::Seen::Unknown(why.to_string()),
        }
    }
}

fn data_of<'a>(data: impl Iterator<Item = &'a RData>) -> Vec<String> {
    data.filter_map(|d| match d {
        RData::TXT(txt) => Some(
            txt.txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<String>(),
        ),
        RData::MX(mx) => Some(format!("{} {}", mx.preference, mx.exchange)),
        RData::SRV(srv) => Some(format!(
            "{} {} {} {}",
            srv.priority, srv.weight, srv.port, srv.target
        )),
        RData::PTR(ptr) => Some(ptr.to_string()),
        _ => None,
    })
    .collect()
}

/// Every record of [`super::records`] with what DNS says about it. Without
/// configured addresses, the host name's A/AAAA records are looked up and the
/// reverse name of each is checked.
pub(crate) async fn check(config: &Config, keys: &dkim::State, now: i64) -> Vec<(Record, Verdict)> {
    let mut records = super::records(config, keys, now);
    let dns = match Dns::system() {
        Ok(dns) => dns,
        Err(e) => {
            let why = e.to_string();
            return records
                .into_iter()
                .map(|r| (r, Verdict::Unknown(why.clone())))
                .collect();
        }
    };
    let mut out = Vec::new();
    if config.dns.addresses.is_empty() {
        let host = &config.host_name;
        let mut addresses: Vec<IpAddr> = Vec::new();
        let mut unknown = None;
        for rtype in [RType::A, RType::AAAA] {
            match dns.find(host, rtype).await {
                Ok(found) => {
                    addresses.extend(found.iter().filter_map(|a| a.parse::<IpAddr>().ok()))
                }
                Err(why) => unknown = Some(why),
            }
        }
        if addresses.is_empty() {
            out.push((
                Record {
                    domain: host.clone(),
                    name: host.clone(),
                    rtype: RType::A,
                    value: "this server's address".into(),
                    required: true,
                    purpose: Purpose::Address,
                    comment: format!("{host} is this server"),
                },
                unknown.map_or(Verdict::Missing, |why| Verdict::Unknown(why.to_string())),
            ));
        }
        for ip in addresses {
            records.push(Record {
                domain: host.clone(),
                name: super::reverse_name(ip),
                rtype: RType::PTR,
                value: format!("{host}."),
                required: true,
                purpose: Purpose::ReverseName,
                comment: format!("the reverse name of {ip}, set at your hosting provider"),
            });
        }
    }
    for record in records {
        let found = dns.find(&record.name, record.rtype).await;
        let verdict = super::judge(&record, &found, keys);
        out.push((record, verdict));
    }
    out
}
