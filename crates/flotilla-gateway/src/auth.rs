//! Optional bearer-token authentication: tokens come from a file, one per line, and every
//! route but the two health checks needs `Authorization: Bearer <token>`. A missing or wrong
//! token is answered 401 with `WWW-Authenticate: Bearer` before anything reaches NATS.
//!
//! Only SHA-256 digests of the tokens are kept, and a presented token's digest is compared
//! with every one in constant time, so timing tells neither a token's bytes nor its length.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::error::{ApiError, ErrorKind, GatewayError, NativeError, OipError};

/// The accepted tokens, as digests.
#[derive(Clone)]
pub struct Tokens(Arc<Vec<[u8; 32]>>);

impl Tokens {
    /// Reads a token file: one token per line; blank lines and lines starting with `#` are
    /// skipped, surrounding whitespace is not part of a token.
    pub fn load(path: &Path) -> Result<Tokens, GatewayError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| GatewayError::TokensRead {
            path: shown.clone(),
            source,
        })?;
        let tokens = Tokens::parse(&text);
        if tokens.0.is_empty() {
            return Err(GatewayError::NoTokens { path: shown });
        }
        Ok(tokens)
    }

    pub fn parse(text: &str) -> Tokens {
        let digests = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(digest)
            .collect();
        Tokens(Arc::new(digests))
    }

    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented);
        let mut found = Choice::from(0);
        for token in self.0.iter() {
            found |= token.ct_eq(&presented);
        }
        found.into()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Paths that answer without a token: load balancers and orchestrators probe them.
fn is_health_check(path: &str) -> bool {
    matches!(path, "/v2/health/live" | "/v2/health/ready")
}

/// The middleware: passes requests with an accepted token (and health checks) on.
pub async fn require(State(tokens): State<Tokens>, request: Request, next: Next) -> Response {
    if is_health_check(request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let (message, challenge) = match presented {
        Some(token) if tokens.accepts(token) => return next.run(request).await,
        Some(_) => (
            "the bearer token is not accepted",
            r#"Bearer realm="flotilla", error="invalid_token""#,
        ),
        None => (
            "this gateway needs an Authorization: Bearer <token> header",
            r#"Bearer realm="flotilla""#,
        ),
    };
    let error = ApiError::new(ErrorKind::Unauthorized, message);
    let mut response = if request.uri().path().starts_with("/v2") {
        OipError(error).into_response()
    } else {
        NativeError(error).into_response()
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_whole_lines() {
        let tokens = Tokens::parse("# ops\n  s3cret  \n\nother\n");
        assert!(tokens.accepts("s3cret"));
        assert!(tokens.accepts("other"));
        for wrong in ["s3cre", "s3cret2", "", "# ops"] {
            assert!(!tokens.accepts(wrong), "{wrong:?}");
        }
    }
}
