//! Who may do what: bearer tokens mapped to roles, and client certificate
//! subjects mapped to roles.
//!
//! The server holds only SHA-256 hashes of tokens, never tokens. A request
//! carries `authorization: Bearer <token>`; the hash of the token names a
//! principal with roles:
//!
//! | role | allows |
//! |---|---|
//! | `publish` | publishing artifacts |
//! | `pin` | pinning, in every environment or only the listed ones |
//! | `read` | resolve, history, fetch, stat, list, checkpoints, entries, proofs, keys |
//! | `admin` | the publisher key lifecycle |
//!
//! With no tokens and no certificate mappings configured, authentication is
//! off: the embedded default for one machine, which the server only allows
//! on a loopback address. Once any is configured, every request needs a
//! credential unless `anonymous_read` lets reads through.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Kind, Result};
use crate::ids::EnvName;
use crate::time::Timestamp;

/// A permission a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Publish,
    Pin,
    Read,
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Publish => "publish",
            Role::Pin => "pin",
            Role::Read => "read",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "publish" => Ok(Role::Publish),
            "pin" => Ok(Role::Pin),
            "read" => Ok(Role::Read),
            "admin" => Ok(Role::Admin),
            other => Err(Error::invalid(format!(
                "role {other:?} is not one of publish, pin, read, admin"
            ))),
        }
    }
}

/// One configured token: its hash, a name for logs and log entries, roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    pub roles: Vec<Role>,
    /// The environments it may pin, and the only ones whose OCI tags it
    /// sees (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envs: Vec<String>,
    /// When it was made (`token create` records it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Timestamp>,
    /// From this instant on it is refused (`token create --expires-in`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
}

/// A client certificate subject (its common name) mapped to roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    pub subject_cn: String,
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envs: Vec<String>,
}

/// Who a request is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Recorded as the actor of the log entries it writes.
    pub name: String,
    roles: Vec<Role>,
    envs: Vec<EnvName>,
    /// When its token stops being accepted.
    expires: Option<Timestamp>,
}

impl Principal {
    /// Whether environment `env` is one this principal is scoped to: every
    /// environment when its token or certificate names none.
    pub fn sees(&self, env: &EnvName) -> bool {
        self.envs.is_empty() || self.envs.contains(env)
    }

    /// The environments it is scoped to; `None` when it sees all.
    pub fn scope(&self) -> Option<&[EnvName]> {
        (!self.envs.is_empty()).then_some(self.envs.as_slice())
    }

    fn anonymous(roles: Vec<Role>) -> Self {
        Self {
            name: crate::registry::ANONYMOUS.to_owned(),
            roles,
            envs: Vec::new(),
            expires: None,
        }
    }
}

/// What a request wants to do.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    Publish,
    Pin(&'a EnvName),
    /// Pinning in some environment: the role alone, for refusing a caller
    /// before its input is looked at.
    PinAnywhere,
    Read,
    Admin,
}

impl Action<'_> {
    fn role(&self) -> Role {
        match self {
            Action::Publish => Role::Publish,
            Action::Pin(_) | Action::PinAnywhere => Role::Pin,
            Action::Read => Role::Read,
            Action::Admin => Role::Admin,
        }
    }
}

/// Hex SHA-256 of a token, as the configuration holds it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Decides every request, by the credentials in force: a reload
/// ([`Authorizer::replace`]) swaps them for every listener at once, and
/// each request is decided by the set in force when it arrives.
#[derive(Clone, Debug, Default)]
pub struct Authorizer {
    current: Arc<RwLock<Arc<Credentials>>>,
}

/// The credentials configured: tokens by hash, certificate subjects.
#[derive(Debug, Default)]
struct Credentials {
    tokens: HashMap<String, Principal>,
    certs: HashMap<String, Principal>,
    anonymous_read: bool,
}

fn principal(name: &str, roles: &[Role], envs: &[String]) -> Result<Principal> {
    let envs = envs
        .iter()
        .map(|e| e.parse().map_err(Error::from))
        .collect::<Result<Vec<EnvName>>>()?;
    if roles.is_empty() {
        return Err(Error::invalid(format!("credential {name:?} has no roles")));
    }
    Ok(Principal {
        name: name.to_owned(),
        roles: roles.to_vec(),
        envs,
        expires: None,
    })
}

impl Authorizer {
    /// An authorizer for the configured tokens and certificate subjects.
    ///
    /// # Errors
    /// Invalid for a malformed hash, a duplicate, an empty role list or a
    /// bad environment name.
    pub fn new(tokens: &[TokenConfig], certs: &[CertConfig], anonymous_read: bool) -> Result<Self> {
        let mut out = Credentials {
            anonymous_read,
            ..Credentials::default()
        };
        for t in tokens {
            let hash = t.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::invalid(format!(
                    "token {:?}: sha256 must be 64 hex digits (from `stackpin-registry token create`)",
                    t.name
                )));
            }
            let who = Principal {
                expires: t.expires,
                ..principal(&t.name, &t.roles, &t.envs)?
            };
            if out.tokens.insert(hash, who).is_some() {
                return Err(Error::invalid(format!(
                    "token {:?} is configured twice",
                    t.name
                )));
            }
        }
        for c in certs {
            out.certs.insert(
                c.subject_cn.clone(),
                principal(&c.subject_cn, &c.roles, &c.envs)?,
            );
        }
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(out))),
        })
    }

    fn credentials(&self) -> Arc<Credentials> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `other`'s credentials in force here (and in every clone):
    /// requests from now on are decided by them.
    pub fn replace(&self, other: &Authorizer) {
        let new = other.credentials();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = new;
    }

    /// Whether any credential is configured (authentication is on).
    pub fn enabled(&self) -> bool {
        self.credentials().enabled()
    }

    /// Authorizes `action` for a request carrying `bearer` (the token, if
    /// any) and `cert_cn` (the verified client certificate's common name).
    ///
    /// # Errors
    /// Unauthenticated for a missing, unknown or expired credential;
    /// PermissionDenied for a known one without the role or environment.
    pub fn authorize(
        &self,
        bearer: Option<&str>,
        cert_cn: Option<&str>,
        action: Action<'_>,
    ) -> Result<Principal> {
        self.credentials().authorize(bearer, cert_cn, action)
    }
}

impl Credentials {
    fn enabled(&self) -> bool {
        !self.tokens.is_empty() || !self.certs.is_empty()
    }

    fn authorize(
        &self,
        bearer: Option<&str>,
        cert_cn: Option<&str>,
        action: Action<'_>,
    ) -> Result<Principal> {
        if !self.enabled() {
            return Ok(Principal::anonymous(vec![
                Role::Publish,
                Role::Pin,
                Role::Read,
                Role::Admin,
            ]));
        }
        let who = match (bearer, cert_cn) {
            (Some(token), _) => self.tokens.get(&token_hash(token)).ok_or_else(|| {
                Error::new(
                    Kind::Unauthenticated,
                    "the bearer token is not one this registry knows",
                )
            })?,
            (None, Some(cn)) => self.certs.get(cn).ok_or_else(|| {
                Error::new(
                    Kind::Unauthenticated,
                    format!("client certificate subject {cn:?} is not mapped to any role"),
                )
            })?,
            (None, None) => {
                if self.anonymous_read && matches!(action, Action::Read) {
                    return Ok(Principal::anonymous(vec![Role::Read]));
                }
                return Err(Error::new(
                    Kind::Unauthenticated,
                    "this registry requires a bearer token (--token-file or STACKPIN_TOKEN)",
                ));
            }
        };
        if let Some(expires) = who.expires
            && Timestamp::now() >= expires
        {
            return Err(Error::new(
                Kind::Unauthenticated,
                format!(
                    "token {:?} expired at {expires} (make a new one with `stackpin-registry \
                     token create`)",
                    who.name
                ),
            ));
        }
        let role = action.role();
        // An admin also reads: the keys it manages, the log it changes.
        let admin_reads = role == Role::Read && who.roles.contains(&Role::Admin);
        if !who.roles.contains(&role) && !admin_reads {
            return Err(Error::new(
                Kind::PermissionDenied,
                format!("{} lacks the {role} role", who.name),
            ));
        }
        if let Action::Pin(env) = action
            && !who.envs.is_empty()
            && !who.envs.contains(env)
        {
            return Err(Error::new(
                Kind::PermissionDenied,
                format!("{} may not pin in environment {env}", who.name),
            ));
        }
        Ok(who.clone())
    }
}

/// The token of an `authorization` header (gRPC metadata or HTTP): the
/// one parser of both listeners. `value` is None when the header is not
/// text.
///
/// # Errors
/// Unauthenticated when the value is not `Bearer <token>`.
pub fn bearer(value: Option<&str>) -> Result<&str> {
    value
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Error::new(
                Kind::Unauthenticated,
                "the authorization header is not `Bearer <token>`",
            )
        })
}

/// The subject common name of a DER certificate (already verified by TLS).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// A new random token (shown once) and its configuration entry, valid
/// for `expires_in` from now when given.
///
/// # Errors
/// Invalid for a bad name, role list or scope; Internal when the system
/// has no randomness.
pub fn create_token(
    name: &str,
    roles: &[Role],
    envs: &[String],
    expires_in: Option<std::time::Duration>,
) -> Result<(String, TokenConfig)> {
    principal(name, roles, envs)?;
    if !envs.is_empty() && !roles.iter().any(|r| matches!(r, Role::Pin | Role::Read)) {
        return Err(Error::invalid(
            "--env limits where a token may pin and which environments' OCI tags it reads; a \
             token with neither the pin nor the read role cannot use it: add --role pin or \
             --role read, or leave --env out",
        ));
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal(format!("no system randomness: {e}")))?;
    let token = format!("sp_{}", hex::encode(bytes));
    let created = Timestamp::now();
    let expires = match expires_in {
        None => None,
        Some(d) => {
            let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
            let end = created.as_micros().saturating_add(micros);
            Some(Timestamp::from_micros(end).map_err(|_| {
                Error::invalid(format!("--expires-in {d:?} ends beyond the year 9999"))
            })?)
        }
    };
    let config = TokenConfig {
        name: name.to_owned(),
        sha256: token_hash(&token),
        roles: roles.to_vec(),
        envs: envs.to_vec(),
        created: Some(created),
        expires,
    };
    Ok((token, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_is_refused_for_roles_that_cannot_use_it() {
        let env = ["prod".to_owned()];
        for roles in [
            &[Role::Publish][..],
            &[Role::Admin],
            &[Role::Publish, Role::Admin],
        ] {
            let e = create_token("t", roles, &env, None).unwrap_err();
            assert_eq!(e.kind(), Kind::Invalid, "{roles:?}");
        }
        for roles in [&[Role::Pin][..], &[Role::Read], &[Role::Admin, Role::Read]] {
            assert!(create_token("t", roles, &env, None).is_ok(), "{roles:?}");
        }
        assert!(create_token("t", &[Role::Publish], &[], None).is_ok());
    }

    #[test]
    fn an_expired_token_is_refused_and_one_not_yet_expired_is_not() {
        let (old, mut old_cfg) = create_token("old", &[Role::Read], &[], None).unwrap();
        old_cfg.expires = Some(Timestamp::now().saturating_add_micros(-1));
        let (new, new_cfg) = create_token(
            "new",
            &[Role::Read],
            &[],
            Some(std::time::Duration::from_secs(3600)),
        )
        .unwrap();
        assert!(new_cfg.expires > new_cfg.created);
        let auth = Authorizer::new(&[old_cfg, new_cfg], &[], false).unwrap();
        let e = auth.authorize(Some(&old), None, Action::Read).unwrap_err();
        assert_eq!(e.kind(), Kind::Unauthenticated);
        assert!(e.message().contains("expired at"), "{e}");
        assert!(auth.authorize(Some(&new), None, Action::Read).is_ok());
    }

    #[test]
    fn a_replaced_authorizer_decides_every_clone_from_the_next_request_on() {
        let (a, a_cfg) = create_token("a", &[Role::Read], &[], None).unwrap();
        let (b, b_cfg) = create_token("b", &[Role::Read], &[], None).unwrap();
        let serving = Authorizer::new(&[a_cfg], &[], false).unwrap();
        let clone = serving.clone();
        assert!(clone.authorize(Some(&a), None, Action::Read).is_ok());
        serving.replace(&Authorizer::new(&[b_cfg], &[], false).unwrap());
        assert_eq!(
            clone
                .authorize(Some(&a), None, Action::Read)
                .unwrap_err()
                .kind(),
            Kind::Unauthenticated
        );
        assert!(clone.authorize(Some(&b), None, Action::Read).is_ok());
    }

    #[test]
    fn an_admin_also_reads_but_does_not_publish_or_pin() {
        let (token, cfg) = create_token("ops", &[Role::Admin], &[], None).unwrap();
        let auth = Authorizer::new(&[cfg], &[], false).unwrap();
        assert!(auth.authorize(Some(&token), None, Action::Read).is_ok());
        assert!(auth.authorize(Some(&token), None, Action::Admin).is_ok());
        for action in [Action::Publish, Action::PinAnywhere] {
            let e = auth.authorize(Some(&token), None, action).unwrap_err();
            assert_eq!(e.kind(), Kind::PermissionDenied);
        }
    }

    #[test]
    fn one_parser_reads_a_bearer_token_and_refuses_anything_else() {
        assert_eq!(bearer(Some("Bearer t0k")).unwrap(), "t0k");
        for bad in [Some("Basic dXNlcg=="), Some("bearer t0k"), None] {
            assert_eq!(bearer(bad).unwrap_err().kind(), Kind::Unauthenticated);
        }
    }

    fn auth() -> (Authorizer, String, String) {
        let (ci, ci_cfg) =
            create_token("ci", &[Role::Publish, Role::Pin], &["staging".into()], None).unwrap();
        let (ops, ops_cfg) = create_token("ops", &[Role::Read, Role::Admin], &[], None).unwrap();
        (
            Authorizer::new(&[ci_cfg, ops_cfg], &[], false).unwrap(),
            ci,
            ops,
        )
    }

    #[test]
    fn roles_and_environments_are_enforced() {
        let (a, ci, ops) = auth();
        let staging: EnvName = "staging".parse().unwrap();
        let prod: EnvName = "prod".parse().unwrap();
        assert_eq!(
            a.authorize(Some(&ci), None, Action::Pin(&staging))
                .unwrap()
                .name,
            "ci"
        );
        let e = a
            .authorize(Some(&ci), None, Action::Pin(&prod))
            .unwrap_err();
        assert_eq!(e.kind(), Kind::PermissionDenied);
        let e = a.authorize(Some(&ci), None, Action::Read).unwrap_err();
        assert_eq!(e.kind(), Kind::PermissionDenied);
        assert!(a.authorize(Some(&ops), None, Action::Admin).is_ok());
        let e = a
            .authorize(Some("sp_wrong"), None, Action::Read)
            .unwrap_err();
        assert_eq!(e.kind(), Kind::Unauthenticated);
        let e = a.authorize(None, None, Action::Read).unwrap_err();
        assert_eq!(e.kind(), Kind::Unauthenticated);
    }

    #[test]
    fn anonymous_read_lets_only_reads_through() {
        let (_, cfg) = create_token("ci", &[Role::Publish], &[], None).unwrap();
        let a = Authorizer::new(&[cfg], &[], true).unwrap();
        assert!(a.authorize(None, None, Action::Read).is_ok());
        assert_eq!(
            a.authorize(None, None, Action::Publish).unwrap_err().kind(),
            Kind::Unauthenticated
        );
    }

    #[test]
    fn bad_configuration_is_refused() {
        let bad = TokenConfig {
            name: "x".into(),
            sha256: "abc".into(),
            roles: vec![Role::Read],
            envs: vec![],
            created: None,
            expires: None,
        };
        assert!(Authorizer::new(&[bad], &[], false).is_err());
        assert!(create_token("x", &[], &[], None).is_err());
        assert!(create_token("x", &[Role::Pin], &["../prod".into()], None).is_err());
    }
}
