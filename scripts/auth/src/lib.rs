//! Default login script: verifies an HS256 JWT (RFC 7519) and returns its subject as user id.
//!
//! Configuration (JSON, the `config` table of `[scripts.auth]`):
//! - `secret` (string, required): the HMAC-SHA256 key.
//! - `issuer` (string, optional): when set, the token must carry `iss` equal to it (a token
//!   without `iss` is refused like one with another issuer).
//! - `leeway_s` (integer, default 30): clock skew tolerated on `exp` and `nbf`, in seconds.
//! - `duplicate_login` (string, default `"allow"`): what a second login of the same user does:
//!   `"allow"` (both sessions live), `"kick-older"` (the older session is closed with 4006
//!   `replaced`, wherever it is) or `"refuse-new"` (the new login is refused).
//!
//! The token must be HS256 and carry `sub` (the user id) and `exp`; `exp` is always checked,
//! and `nbf`, when present, too (both with `leeway_s`). docs/scripting.md lists each refusal
//! and its error code. Each ended
//! logged-in session ("account lost", seed 004) is counted in the script counter
//! `account_lost_<reason>` (`wasmgate_script_events_total{script="auth",name=..}`).

use std::sync::OnceLock;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;
use wasmgate_guest::auth::{DuplicateLogin, Guest, Identity, Rejection, Session};
use wasmgate_guest::host::counter_add;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    secret: String,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default = "default_leeway")]
    leeway_s: u64,
    #[serde(default)]
    duplicate_login: Duplicate,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum Duplicate {
    #[default]
    Allow,
    KickOlder,
    RefuseNew,
}

impl From<Duplicate> for DuplicateLogin {
    fn from(d: Duplicate) -> Self {
        match d {
            Duplicate::Allow => DuplicateLogin::Allow,
            Duplicate::KickOlder => DuplicateLogin::KickOlder,
            Duplicate::RefuseNew => DuplicateLogin::RefuseNew,
        }
    }
}

fn default_leeway() -> u64 {
    30
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

struct Verifier {
    key: DecodingKey,
    validation: Validation,
    on_duplicate: Duplicate,
}

static VERIFIER: OnceLock<Verifier> = OnceLock::new();

struct Auth;

impl Guest for Auth {
    fn init(config: String) -> Result<(), String> {
        let config: Config = serde_json::from_str(&config).map_err(|e| format!("auth config: {e}"))?;
        if config.secret.is_empty() {
            return Err("auth config: `secret` must not be empty".into());
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway_s;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        }
        let verifier = Verifier {
            key: DecodingKey::from_secret(config.secret.as_bytes()),
            validation,
            on_duplicate: config.duplicate_login,
        };
        // `init` runs once per instance; a second call keeps the first configuration.
        let _ = VERIFIER.set(verifier);
        Ok(())
    }

    fn authenticate(_session: Session, token: String) -> Result<Identity, Rejection> {
        let verifier =
            VERIFIER.get().ok_or_else(|| Rejection::Forbidden("auth script not initialised".into()))?;
        match decode::<Claims>(&token, &verifier.key, &verifier.validation) {
            Ok(data) if data.claims.sub.is_empty() => {
                Err(Rejection::InvalidToken("empty `sub` claim".into()))
            }
            Ok(data) => Ok(Identity { user_id: data.claims.sub, on_duplicate: verifier.on_duplicate.into() }),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => Rejection::Expired,
                ErrorKind::InvalidIssuer => Rejection::Forbidden("wrong issuer".into()),
                ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
                    Rejection::Forbidden("no issuer (`iss`)".into())
                }
                ErrorKind::ImmatureSignature => Rejection::Forbidden("token not yet valid".into()),
                _ => Rejection::InvalidToken(e.to_string()),
            }),
        }
    }

    fn account_lost(_session: Session, reason: String) {
        counter_add(&format!("account_lost_{reason}"), 1);
    }
}

wasmgate_guest::auth::export!(Auth);
