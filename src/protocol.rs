//! The wire contract of `flotilla.predict.<model>` (see `docs/protocol.md`).
//!
//! This module owns everything a byte on the wire can mean: header names, the two encodings,
//! decoding a request body into a dense row-major matrix with errors that say *where* the input
//! was wrong, encoding replies and error replies, and the table of error kinds and codes.
//! It knows nothing about NATS connections, queues or models beyond their feature count.

use std::fmt;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Request header: `application/json` or `application/msgpack`.
pub const CONTENT_TYPE: &str = "Content-Type";
/// Request header pinning a model version; reply header naming the version that computed it.
pub const VERSION_HEADER: &str = "Flotilla-Version";
/// Reply header (an extension of the contract): the id of the worker that answered, the same
/// id it registers under in the services API.
pub const WORKER_HEADER: &str = "Flotilla-Worker";
/// Request header: the caller's remaining budget in milliseconds.
pub const TIMEOUT_HEADER: &str = "Flotilla-Timeout-Ms";
/// NATS services API (ADR-32) error headers.
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

pub const JSON_CONTENT_TYPE: &str = "application/json";
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";

/// The default first token of every flotilla subject.
pub const DEFAULT_PREFIX: &str = "flotilla";

/// The subject a model's predictions are requested on.
pub fn predict_subject(prefix: &str, model: &str) -> String {
    format!("{prefix}.predict.{model}")
}

/// Checks a model name against the contract: 1 to 64 characters of `A-Z a-z 0-9 _ -`.
pub fn validate_model_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "model name {name:?} must be 1 to 64 characters long (it has {})",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "model name {name:?} contains {bad:?}; only A-Z a-z 0-9 _ - are allowed"
        ));
    }
    Ok(())
}

/// One of the two body encodings. A reply always uses the request's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    MsgPack,
}

impl Encoding {
    /// Picks the encoding from `Content-Type`, else sniffs the body: JSON when its first
    /// non-blank byte is `{`, MessagePack otherwise.
    pub fn detect(headers: Option<&HeaderMap>, body: &[u8]) -> Result<Encoding, ServiceError> {
        if let Some(value) = headers.and_then(|h| header(h, CONTENT_TYPE)) {
            let media = value.split(';').next().unwrap_or("").trim();
            return match media.to_ascii_lowercase().as_str() {
                JSON_CONTENT_TYPE => Ok(Encoding::Json),
                MSGPACK_CONTENT_TYPE | "application/x-msgpack" => Ok(Encoding::MsgPack),
                _ => Err(ServiceError::bad_request(format!(
                    "Content-Type {value:?} is not supported; use {JSON_CONTENT_TYPE} or {MSGPACK_CONTENT_TYPE}"
                ))),
            };
        }
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        Ok(if first == Some(&b'{') {
            Encoding::Json
        } else {
            Encoding::MsgPack
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON_CONTENT_TYPE,
            Encoding::MsgPack => MSGPACK_CONTENT_TYPE,
        }
    }

    /// Encodes any serialisable value; MessagePack maps keep their field names so that
    /// clients in other languages see a map, never a positional array.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Bytes, ServiceError> {
        let bytes = match self {
            Encoding::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Encoding::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
        };
        bytes
            .map(Bytes::from)
            .map_err(|e| ServiceError::internal(format!("encoding the reply failed: {e}")))
    }
}

/// The encoding of an error reply: the request's, unless its body is not even well-formed
/// MessagePack, in which case JSON (the contract's rule for undecodable requests).
pub fn error_encoding(request: Encoding, body: &[u8]) -> Encoding {
    if request == Encoding::Json {
        return Encoding::Json;
    }
    let mut rest = body;
    let well_formed = IgnoredAny::deserialize(&mut rmp_serde::Deserializer::new(&mut rest)).is_ok();
    if well_formed && rest.is_empty() {
        Encoding::MsgPack
    } else {
        Encoding::Json
    }
}

/// Looks a header up by exact name first, then case-insensitively: clients in other
/// languages do not all preserve case.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    if let Some(v) = headers.get(name) {
        return Some(v.as_str());
    }
    headers.iter().find_map(|(k, values)| {
        let key: &str = k.as_ref();
        if key.eq_ignore_ascii_case(name) {
            values.first().map(|v| v.as_str())
        } else {
            None
        }
    })
}

/// The protocol's error kinds; each maps to exactly one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    BadRequest,
    VersionUnavailable,
    TooLarge,
    Overloaded,
    DeadlineExceeded,
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::BadRequest,
        ErrorKind::VersionUnavailable,
        ErrorKind::TooLarge,
        ErrorKind::Overloaded,
        ErrorKind::DeadlineExceeded,
        ErrorKind::Internal,
    ];

    pub fn code(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::VersionUnavailable => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::Overloaded => 503,
            ErrorKind::DeadlineExceeded => 504,
            ErrorKind::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::VersionUnavailable => "version_unavailable",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Internal => "internal",
        }
    }

    pub fn from_code(code: u16) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.code() == code)
    }

    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that is answered to the caller: a kind (hence a code) and a message that says
/// what was wrong and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind} ({code}): {message}", code = kind.code())]
pub struct ServiceError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ServiceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError {
            kind,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

/// Request headers that steer how a request is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `Flotilla-Version`: serve exactly this version or fail with 409.
    pub version: Option<u64>,
    /// `Flotilla-Timeout-Ms`: the caller's remaining budget.
    pub timeout_ms: Option<u64>,
}

impl RequestOptions {
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<Self, ServiceError> {
        let Some(headers) = headers else {
            return Ok(Self::default());
        };
        let number = |name: &str| -> Result<Option<u64>, ServiceError> {
            match header(headers, name) {
                None => Ok(None),
                Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                    ServiceError::bad_request(format!(
                        "header {name} must be a non-negative integer, got {v:?}"
                    ))
                }),
            }
        };
        Ok(RequestOptions {
            version: number(VERSION_HEADER)?,
            timeout_ms: number(TIMEOUT_HEADER)?,
        })
    }
}

/// A decoded request body: `rows x features` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub values: Vec<f64>,
    pub rows: usize,
    pub features: usize,
}

/// A decoded predict request.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictRequest {
    pub inputs: Rows,
    /// True for the single-row `x` form, whose reply also carries `y_pred`.
    pub single: bool,
    pub id: Option<String>,
}

impl PredictRequest {
    /// Decodes and checks a body: a map with `inputs` (rows of numbers) or `x` (one row).
    /// Every refusal names the offending field, row and column.
    pub fn decode(encoding: Encoding, body: &[u8]) -> Result<PredictRequest, ServiceError> {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(ServiceError::bad_request(
                "empty body; send a map with \"inputs\" (rows of numbers) or \"x\" (one row)",
            ));
        }
        let raw = match encoding {
            Encoding::Json => {
                let mut de = serde_json::Deserializer::from_slice(body);
                let raw = RawRequest::deserialize(&mut de).and_then(|r| de.end().map(|_| r));
                raw.map_err(|e| ServiceError::bad_request(format!("invalid JSON body: {e}")))?
            }
            Encoding::MsgPack => {
                let mut rest = body;
                let raw = RawRequest::deserialize(&mut rmp_serde::Deserializer::new(&mut rest))
                    .map_err(|e| {
                        ServiceError::bad_request(format!("invalid MessagePack body: {e}"))
                    })?;
                if !rest.is_empty() {
                    return Err(ServiceError::bad_request(format!(
                        "invalid MessagePack body: {} trailing bytes after the request map",
                        rest.len()
                    )));
                }
                raw
            }
        };
        let (inputs, single) = match (raw.inputs, raw.x) {
            (Some(_), Some(_)) => {
                return Err(ServiceError::bad_request(
                    "body has both \"inputs\" and \"x\"; send exactly one",
                ))
            }
            (Some(rows), None) => (rows, false),
            (None, Some(row)) => (row, true),
            (None, None) => {
                return Err(ServiceError::bad_request(
                    "body has neither \"inputs\" (rows of numbers) nor \"x\" (one row)",
                ))
            }
        };
        if inputs.rows == 0 || inputs.features == 0 {
            let field = if single { "x" } else { "inputs" };
            return Err(ServiceError::bad_request(format!(
                "\"{field}\" is empty; send at least one row with at least one number"
            )));
        }
        Ok(PredictRequest {
            inputs,
            single,
            id: raw.id,
        })
    }

    /// Encodes a request the way the client sends it.
    pub fn encode(encoding: Encoding, rows: &[Vec<f64>], id: Option<&str>) -> Bytes {
        #[derive(Serialize)]
        struct Wire<'a> {
            inputs: &'a [Vec<f64>],
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a str>,
        }
        encoding
            .encode(&Wire { inputs: rows, id })
            .expect("a list of numbers always encodes")
    }
}

struct RawRequest {
    inputs: Option<Rows>,
    x: Option<Rows>,
    id: Option<String>,
}

impl<'de> Deserialize<'de> for RawRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawRequest;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map with \"inputs\" or \"x\"")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRequest, A::Error> {
        let mut raw = RawRequest {
            inputs: None,
            x: None,
            id: None,
        };
        while let Some(key) = map.next_key::<KeyName>()? {
            match key.0.as_str() {
                "inputs" => raw.inputs = Some(map.next_value_seed(MatrixSeed)?),
                "x" => {
                    let mut rows = Rows {
                        values: Vec::new(),
                        rows: 1,
                        features: 0,
                    };
                    map.next_value_seed(RowSeed {
                        out: &mut rows.values,
                        field: "x".into(),
                    })?;
                    rows.features = rows.values.len();
                    raw.x = Some(rows);
                }
                "id" => {
                    raw.id =
                        Some(map.next_value::<String>().map_err(|e| {
                            de::Error::custom(format!("\"id\" must be a string ({e})"))
                        })?)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(raw)
    }
}

/// A map key: MessagePack encoders may send keys as str or bin.
struct KeyName(String);

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyName, E> {
                Ok(KeyName(v.to_owned()))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<KeyName, E> {
                Ok(KeyName(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyName, E> {
                Ok(KeyName(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyName, E> {
                Ok(KeyName(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Streams `inputs` straight into one flat buffer, checking each row's width as it goes.
struct MatrixSeed;

impl<'de> DeserializeSeed<'de> for MatrixSeed {
    type Value = Rows;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Rows, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MatrixSeed {
    type Value = Rows;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("\"inputs\" as a list of rows, each a list of numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rows, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(1) * 8);
        let mut rows = 0usize;
        let mut features = 0usize;
        loop {
            let before = values.len();
            let seed = RowSeed {
                out: &mut values,
                field: Field::Row(rows),
            };
            if seq.next_element_seed(seed)?.is_none() {
                break;
            }
            let width = values.len() - before;
            if rows == 0 {
                features = width;
            } else if width != features {
                return Err(de::Error::custom(format!(
                    "inputs[{rows}] has {width} values but inputs[0] has {features}; rows must all be the same length"
                )));
            }
            rows += 1;
        }
        Ok(Rows {
            values,
            rows,
            features,
        })
    }
}

enum Field {
    Row(usize),
    Named(&'static str),
}

impl From<&'static str> for Field {
    fn from(name: &'static str) -> Self {
        Field::Named(name)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Row(r) => write!(f, "inputs[{r}]"),
            Field::Named(n) => f.write_str(n),
        }
    }
}

/// Appends one row of finite numbers to `out`.
struct RowSeed<'a> {
    out: &'a mut Vec<f64>,
    field: Field,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} as a list of numbers", self.field)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut col = 0usize;
        loop {
            let seed = NumberSeed {
                field: &self.field,
                col,
            };
            match seq.next_element_seed(seed)? {
                None => return Ok(()),
                Some(v) => self.out.push(v),
            }
            col += 1;
        }
    }
}

/// One finite number; anything else is refused naming its position (formatted only then,
/// so the happy path allocates nothing per value).
struct NumberSeed<'a> {
    field: &'a Field,
    col: usize,
}

impl<'de> DeserializeSeed<'de> for NumberSeed<'_> {
    type Value = f64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
        d.deserialize_any(self)
    }
}

impl NumberSeed<'_> {
    fn finite<E: de::Error>(&self, v: f64) -> Result<f64, E> {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(E::custom(format!(
                "{}[{}] is {v}; values must be finite numbers",
                self.field, self.col
            )))
        }
    }
    fn not_a_number<E: de::Error>(&self, what: impl fmt::Display) -> E {
        E::custom(format!(
            "{}[{}] is {what}, not a number",
            self.field, self.col
        ))
    }
}

impl<'de> Visitor<'de> for NumberSeed<'_> {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}[{}] as a number", self.field, self.col)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        self.finite(v)
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<f64, E> {
        self.finite(v as f64)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        Err(self.not_a_number(format_args!("the string {v:?}")))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<f64, E> {
        Err(self.not_a_number(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
        Err(self.not_a_number("null"))
    }
    fn visit_none<E: de::Error>(self) -> Result<f64, E> {
        Err(self.not_a_number("null"))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<f64, E> {
        Err(self.not_a_number("binary data"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<f64, A::Error> {
        Err(self.not_a_number("a list"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<f64, A::Error> {
        Err(self.not_a_number("a map"))
    }
}

/// A predicted label: the model's own label, or the class index when it has none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Label {
    Index(u64),
    Name(String),
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Index(i) => write!(f, "{i}"),
            Label::Name(n) => f.write_str(n),
        }
    }
}

/// A row-major `rows x cols` block serialised as a list of lists, without copying.
pub struct MatrixRef<'a> {
    pub values: &'a [f64],
    pub cols: usize,
}

impl Serialize for MatrixRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.values.chunks(self.cols.max(1)))
    }
}

/// `y_pred`: a number for one-output models, a list otherwise.
#[derive(Serialize)]
#[serde(untagged)]
pub enum YPred<'a> {
    Scalar(f64),
    Row(&'a [f64]),
}

/// The body of a successful reply.
#[derive(Serialize)]
pub struct PredictReply<'a> {
    pub outputs: MatrixRef<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<&'a [Label]>,
    pub model: &'a str,
    pub version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y_pred: Option<YPred<'a>>,
}

/// The decoded body of a successful reply, as a client sees it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Prediction {
    pub outputs: Vec<Vec<f64>>,
    #[serde(default)]
    pub labels: Option<Vec<Label>>,
    pub model: String,
    pub version: u64,
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: ErrorDetail<'a>,
}

#[derive(Serialize, Deserialize)]
struct ErrorDetail<'a> {
    code: u16,
    kind: &'a str,
    #[serde(borrow)]
    message: std::borrow::Cow<'a, str>,
}

/// Reply headers for a success.
pub fn reply_headers(encoding: Encoding, version: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, encoding.content_type());
    h.insert(VERSION_HEADER, version.to_string());
    h
}

/// Headers and body of an error reply, in the request's encoding.
pub fn error_reply(encoding: Encoding, err: &ServiceError) -> (HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, encoding.content_type());
    // Header values cannot carry line breaks; the body keeps the full message.
    let one_line: String = err
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    h.insert(SERVICE_ERROR, one_line);
    h.insert(SERVICE_ERROR_CODE, err.kind.code().to_string());
    let body = ErrorBody {
        error: ErrorDetail {
            code: err.kind.code(),
            kind: err.kind.as_str(),
            message: std::borrow::Cow::Borrowed(&err.message),
        },
    };
    let bytes = encoding
        .encode(&body)
        .unwrap_or_else(|_| Bytes::from_static(b"{\"error\":{\"code\":500,\"kind\":\"internal\",\"message\":\"encoding the error failed\"}}"));
    (h, bytes)
}

/// Reads an error reply back: from the service-error headers and, when it decodes, the body
/// (which carries the kind and the untruncated message).
pub fn parse_error_reply(headers: Option<&HeaderMap>, body: &[u8]) -> Option<ServiceError> {
    let headers = headers?;
    let code: u16 = header(headers, SERVICE_ERROR_CODE)?.trim().parse().ok()?;
    let fallback = header(headers, SERVICE_ERROR).unwrap_or("").to_owned();
    let decoded = Encoding::detect(Some(headers), body)
        .ok()
        .and_then(|enc| match enc {
            Encoding::Json => serde_json::from_slice::<ErrorBody>(body)
                .ok()
                .map(|b| (b.error.kind.to_owned(), b.error.message.into_owned())),
            Encoding::MsgPack => rmp_serde::from_slice::<ErrorBody>(body)
                .ok()
                .map(|b| (b.error.kind.to_owned(), b.error.message.into_owned())),
        });
    let (kind, message) = match decoded {
        Some((kind, message)) => (ErrorKind::from_name(&kind), message),
        None => (None, fallback),
    };
    Some(ServiceError {
        kind: kind
            .or_else(|| ErrorKind::from_code(code))
            .unwrap_or(ErrorKind::Internal),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> Result<PredictRequest, ServiceError> {
        PredictRequest::decode(Encoding::Json, body.as_bytes())
    }

    #[test]
    fn decodes_inputs_and_x() {
        let r = json(r#"{"inputs": [[1, 2.5], [3, -4]], "id": "a"}"#).unwrap();
        assert_eq!(r.inputs.values, vec![1.0, 2.5, 3.0, -4.0]);
        assert_eq!((r.inputs.rows, r.inputs.features), (2, 2));
        assert_eq!(r.id.as_deref(), Some("a"));
        let x = json(r#"{"x": [1, 2, 3]}"#).unwrap();
        assert!(x.single);
        assert_eq!((x.inputs.rows, x.inputs.features), (1, 3));
    }

    #[test]
    fn errors_name_the_position() {
        let e = json(r#"{"inputs": [[1, 2], [3]]}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(
            e.message.contains("inputs[1] has 1 values"),
            "{}",
            e.message
        );
        let e = json(r#"{"inputs": [[1, "NaN"]]}"#).unwrap_err();
        assert!(e.message.contains("inputs[0][1]"), "{}", e.message);
        let e = json(r#"{"x": [1, true]}"#).unwrap_err();
        assert!(e.message.contains("x[1] is true"), "{}", e.message);
        let e = json(r#"{"inputs": []}"#).unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        let e = json(r#"{"rows": [[1]]}"#).unwrap_err();
        assert!(e.message.contains("neither"), "{}", e.message);
        let e = json("").unwrap_err();
        assert!(e.message.contains("empty body"), "{}", e.message);
    }

    #[test]
    fn msgpack_non_finite_is_refused() {
        #[derive(Serialize)]
        struct B {
            inputs: Vec<Vec<f64>>,
        }
        let body = rmp_serde::to_vec_named(&B {
            inputs: vec![vec![1.0, f64::INFINITY]],
        })
        .unwrap();
        let e = PredictRequest::decode(Encoding::MsgPack, &body).unwrap_err();
        assert!(e.message.contains("inputs[0][1] is inf"), "{}", e.message);
    }

    #[test]
    fn error_reply_round_trips() {
        let err = ServiceError::new(ErrorKind::TooLarge, "too many rows");
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let (h, b) = error_reply(enc, &err);
            assert_eq!(parse_error_reply(Some(&h), &b), Some(err.clone()));
        }
    }

    #[test]
    fn undecodable_msgpack_is_answered_in_json() {
        let good = PredictRequest::encode(Encoding::MsgPack, &[vec![1.0]], None);
        assert_eq!(error_encoding(Encoding::MsgPack, &good), Encoding::MsgPack);
        for bad in [&[0xc1u8][..], &[0x81, 0xa6], &good[..good.len() - 1]] {
            assert_eq!(
                error_encoding(Encoding::MsgPack, bad),
                Encoding::Json,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn model_names() {
        assert!(validate_model_name("iris-v_2").is_ok());
        assert!(validate_model_name("").is_err());
        assert!(validate_model_name("a.b").is_err());
        assert!(validate_model_name(&"a".repeat(65)).is_err());
    }
}
