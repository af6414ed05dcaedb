//! The order flow: order, publish the http-01 answers, wait for validation, finalize,
//! download, check the pair.

use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewOrder,
    Order, OrderStatus, RetryPolicy,
};

use super::{AcmeError, Responder, protocol};
use crate::tls;

/// How long [`obtain`] waits for the CA to validate all challenges.
pub(crate) const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long [`obtain`] waits for the CA to issue once the order is finalized.
pub(crate) const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Orders a certificate for `names`, answers http-01 through `responder`, and returns
/// (chain PEM, PKCS#8 key PEM) once [`tls::validate_pair`] accepted them for `names`.
///
/// Waits at most [`VALIDATION_TIMEOUT`] for validation and [`ISSUANCE_TIMEOUT`] for the
/// certificate. Published answers are withdrawn whatever happens, even when the
/// future is dropped halfway.
///
/// `replaces` names the certificate this one renews (RFC 9773 §5): CAs may exempt
/// such orders from rate limits. A CA that refuses it (no ARI, a certificate it did
/// not issue, an earlier replacement order still pending) gets the plain order.
pub async fn obtain(
    account: &Account,
    names: &[String],
    responder: &Responder,
    replaces: Option<&CertificateIdentifier<'_>>,
) -> Result<(String, String), AcmeError> {
    let joined = names.join(", ");
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let plain = NewOrder::new(&identifiers);
    let first = match replaces {
        Some(id) => {
            account
                .new_order(&NewOrder::new(&identifiers).replaces(id.clone()))
                .await
        }
        None => account.new_order(&plain).await,
    };
    let first = match first {
        Err(e) if replaces.is_some() && replacement_refused(&e) => {
            tracing::info!(error = %e, "the ACME CA refused the order as a replacement: ordering without `replaces`");
            account.new_order(&plain).await
        }
        other => other,
    };
    let mut order = first.map_err(|e| order_error(e, &joined))?;

    let mut published = Published {
        responder,
        tokens: Vec::new(),
    };
    let mut pending = 0usize;
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(protocol("fetching an authorization"))?;
            let name = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError::Authorization {
                        name,
                        status: status_text(other),
                    });
                }
            }
            let offered: Vec<String> = authz
                .challenges
                .iter()
                .map(|c| challenge_name(&c.r#type).to_string())
                .collect();
            let Some(mut challenge) = authz.challenge(ChallengeType::Http01) else {
                return Err(AcmeError::NoHttp01 {
                    name,
                    offered: offered.join(", "),
                });
            };
            let key_authorization = challenge.key_authorization();
            published.tokens.push(challenge.token.clone());
            responder
                .publish(&challenge.token, key_authorization.as_str())
                .map_err(|source| AcmeError::Publish {
                    name: name.clone(),
                    source,
                })?;
            challenge
                .set_ready()
                .await
                .map_err(protocol("telling the CA the http-01 answer is ready"))?;
            pending += 1;
        }
    }

    if pending > 0 {
        match order.poll_ready(&poll_policy(VALIDATION_TIMEOUT)).await {
            Ok(OrderStatus::Ready) => {}
            Ok(_) | Err(instant_acme::Error::Api(_)) => {
                return Err(explain_invalid(&mut order, &joined, responder).await);
            }
            Err(instant_acme::Error::Timeout(_)) => {
                return Err(AcmeError::ValidationTimeout {
                    names: joined,
                    timeout: VALIDATION_TIMEOUT,
                });
            }
            Err(e) => return Err(protocol("waiting for validation")(e)),
        }
    }
    drop(published);

    let key = order
        .finalize()
        .await
        .map_err(protocol("finalizing the order"))?;
    // A CA that issues at once answers the finalization with a valid order: then
    // there is nothing to wait for.
    let chain = if order.state().status == OrderStatus::Valid {
        order
            .certificate()
            .await
            .map_err(protocol("downloading the certificate"))?
            .ok_or_else(|| AcmeError::Protocol {
                step: "downloading the certificate",
                detail: "the order is valid but has no certificate".into(),
            })?
    } else {
        order
            .poll_certificate(&poll_policy(ISSUANCE_TIMEOUT))
            .await
            .map_err(protocol("downloading the certificate"))?
    };
    tls::validate_pair(chain.as_bytes(), key.as_bytes(), names, SystemTime::now())
        .map_err(AcmeError::Issued)?;
    Ok((chain, key))
}

/// How the order is polled while the CA validates or issues: the CA's Retry-After
/// when it sends one (instant-acme follows it), otherwise soon and then less often
/// (25 ms, then ×1.5 each time: 8 polls in the first 1.3 s, 18 in two minutes). A CA validates
/// and issues in tens of milliseconds to seconds; a fixed first wait of 200 ms
/// was a third of a whole issuance against a fast CA.
fn poll_policy(timeout: Duration) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(25))
        .backoff(1.5)
        .timeout(timeout)
}

const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";
const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

fn problem_type(e: &instant_acme::Error) -> Option<&str> {
    match e {
        instant_acme::Error::Api(problem) => problem.r#type.as_deref(),
        _ => None,
    }
}

/// Whether a refused order may go through without `replaces`: the CA answered, and
/// not about the account or its rate limits.
fn replacement_refused(e: &instant_acme::Error) -> bool {
    match e {
        instant_acme::Error::Unsupported(_) => true,
        instant_acme::Error::Api(_) => {
            !matches!(problem_type(e), Some(ACCOUNT_DOES_NOT_EXIST | RATE_LIMITED))
        }
        _ => false,
    }
}

fn order_error(e: instant_acme::Error, names: &str) -> AcmeError {
    let detail = match &e {
        instant_acme::Error::Api(problem) => problem_text(problem),
        other => other.to_string(),
    };
    match problem_type(&e) {
        Some(ACCOUNT_DOES_NOT_EXIST) => AcmeError::AccountUnknown { detail },
        Some(RATE_LIMITED) => AcmeError::RateLimited {
            names: names.to_string(),
            detail,
        },
        _ => AcmeError::Order {
            names: names.to_string(),
            detail: e.to_string(),
        },
    }
}

/// The order did not become ready: find the authorization that failed and say why.
async fn explain_invalid(order: &mut Order, names: &str, responder: &Responder) -> AcmeError {
    let order_problem = order.state().error.as_ref().map(problem_text);
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let Ok(authz) = authz else { continue };
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let name = authz.identifier().to_string();
        for challenge in &authz.challenges {
            if let Some(problem) = &challenge.error {
                return AcmeError::Challenge {
                    hint: responder.hint(&name),
                    challenge: challenge_name(&challenge.r#type),
                    detail: problem_text(problem),
                    name,
                };
            }
        }
        if authz.status != AuthorizationStatus::Pending {
            return AcmeError::Authorization {
                name,
                status: status_text(authz.status),
            };
        }
    }
    AcmeError::Order {
        names: names.to_string(),
        detail: order_problem
            .unwrap_or_else(|| "the order became invalid without saying why".into()),
    }
}

fn problem_text(problem: &instant_acme::Problem) -> String {
    match (&problem.detail, &problem.r#type) {
        (Some(detail), _) => detail.clone(),
        (None, Some(kind)) => kind.clone(),
        (None, None) => "no detail given".into(),
    }
}

fn challenge_name(kind: &ChallengeType) -> &'static str {
    match kind {
        ChallengeType::Http01 => "http-01",
        ChallengeType::Dns01 => "dns-01",
        ChallengeType::TlsAlpn01 => "tls-alpn-01",
        _ => "another challenge type",
    }
}

fn status_text(status: AuthorizationStatus) -> String {
    format!("{status:?}").to_lowercase()
}

/// Withdraws what was published when dropped: on success, on error, on cancellation.
struct Published<'r> {
    responder: &'r Responder,
    tokens: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for token in self.tokens.drain(..) {
            self.responder.withdraw(&token);
        }
    }
}
