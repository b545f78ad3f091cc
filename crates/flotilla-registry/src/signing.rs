//! Artifact signing with ed25519. A publisher signs the model name and the artifact's SHA-256;
//! workers configured with trusted public keys refuse versions without a valid signature from
//! one of them. Keys are stored as lower-case hex: the secret key file holds the 32-byte seed,
//! the public key file the 32-byte verifying key.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Why a key could not be read or a signature not checked.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("reading key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} is not {len} bytes of hex")]
    Format { what: String, len: usize },
    #[error("{0}")]
    Untrusted(String),
}

/// What is signed: binding the model name stops a signed artifact being replayed as another
/// model.
pub fn signed_message(model: &str, sha256_hex: &str) -> Vec<u8> {
    format!("flotilla.model.v1\n{model}\n{sha256_hex}").into_bytes()
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], SigningError> {
    let text = text.trim();
    let bad = || SigningError::Format {
        what: what.to_owned(),
        len: N,
    };
    // Checked as bytes: slicing a `str` at byte offsets panics inside a multi-byte character.
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let digit = |b: u8| (b as char).to_digit(16).expect("checked above") as u8;
        *byte = digit(pair[0]) << 4 | digit(pair[1]);
    }
    Ok(out)
}

/// A fresh key pair from the operating system's randomness.
pub fn generate() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).expect("the OS provides randomness");
    SigningKey::from_bytes(&seed)
}

pub fn secret_hex(key: &SigningKey) -> String {
    to_hex(&key.to_bytes())
}

pub fn public_hex(key: &VerifyingKey) -> String {
    to_hex(key.as_bytes())
}

/// Reads a secret key file written by `flotilla models keygen`.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, SigningError> {
    let text = std::fs::read_to_string(path).map_err(|source| SigningError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let seed = from_hex::<32>(&text, &format!("secret key file {}", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses a trusted key: hex, or the path of a public key file.
pub fn parse_public_key(spec: &str) -> Result<VerifyingKey, SigningError> {
    let text = if Path::new(spec).is_file() {
        std::fs::read_to_string(spec).map_err(|source| SigningError::Io {
            path: spec.to_owned(),
            source,
        })?
    } else {
        spec.to_owned()
    };
    let bytes = from_hex::<32>(&text, &format!("public key {spec:?}"))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| SigningError::Untrusted(format!("public key {spec:?} is invalid: {e}")))
}

/// Signs; returns `(signature hex, signer public key hex)`.
pub fn sign(key: &SigningKey, model: &str, sha256_hex: &str) -> (String, String) {
    let signature = key.sign(&signed_message(model, sha256_hex));
    (
        to_hex(&signature.to_bytes()),
        public_hex(&key.verifying_key()),
    )
}

/// Checks a version's signature against the trusted keys. With no trusted keys every
/// version is accepted (its checksum is still checked elsewhere).
pub fn verify(
    trusted: &[VerifyingKey],
    model: &str,
    version: u64,
    sha256_hex: &str,
    signature: Option<&str>,
) -> Result<(), SigningError> {
    if trusted.is_empty() {
        return Ok(());
    }
    let Some(signature) = signature else {
        return Err(SigningError::Untrusted(format!(
            "model {model:?} version {version} is unsigned, and with trusted keys configured only signed versions are accepted"
        )));
    };
    let bytes = from_hex::<64>(signature, "signature")?;
    let signature = Signature::from_bytes(&bytes);
    let message = signed_message(model, sha256_hex);
    if trusted
        .iter()
        .any(|key| key.verify(&message, &signature).is_ok())
    {
        Ok(())
    } else {
        Err(SigningError::Untrusted(format!(
            "model {model:?} version {version} has a signature no trusted key made"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 6: a non-ASCII key panicked on a byte-index slice.
    #[test]
    fn a_non_ascii_key_is_an_error_not_a_panic() {
        let spec = "é".repeat(32);
        assert_eq!(spec.len(), 64);
        assert!(parse_public_key(&spec).is_err());
        assert!(parse_public_key(&"zz".repeat(32)).is_err());
        let public = generate().verifying_key();
        let hex = to_hex(public.as_bytes());
        assert_eq!(parse_public_key(&hex).unwrap(), public);
    }

    #[test]
    fn sign_verify_and_refuse() {
        let key = generate();
        let other = generate();
        let (sig, signer) = sign(&key, "iris", "ab");
        assert_eq!(signer, public_hex(&key.verifying_key()));
        let trusted = [key.verifying_key()];
        assert!(verify(&trusted, "iris", 1, "ab", Some(&sig)).is_ok());
        assert!(
            verify(&trusted, "iris", 1, "ac", Some(&sig)).is_err(),
            "other bytes"
        );
        assert!(
            verify(&trusted, "wine", 1, "ab", Some(&sig)).is_err(),
            "other model"
        );
        assert!(verify(&trusted, "iris", 1, "ab", None).is_err(), "unsigned");
        assert!(verify(&[other.verifying_key()], "iris", 1, "ab", Some(&sig)).is_err());
        assert!(
            verify(&[], "iris", 1, "ab", None).is_ok(),
            "no keys: checksum only"
        );
        let parsed = parse_public_key(&public_hex(&key.verifying_key())).unwrap();
        assert_eq!(parsed, key.verifying_key());
        assert!(parse_public_key("zz").is_err());
    }
}
