//! Decoding a predict request body into one dense row-major buffer, with errors that say
//! exactly where the input was wrong, and encoding one the way a client sends it.

use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::encoding::Encoding;
use crate::error::{ErrorKind, ServiceError};
use crate::headers::shown;

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
        PredictRequest::decode_limited(encoding, body, usize::MAX)
    }

    /// [`PredictRequest::decode`], refusing with 413 as soon as `inputs` has more than
    /// `max_rows` rows: a huge body is not decoded to the end only to be refused.
    ///
    /// Nothing is ever sized from a length the body declares: a MessagePack array header can
    /// claim four billion elements in five bytes, so buffers grow with the values actually
    /// read, from a first guess no larger than the body itself.
    pub fn decode_limited(
        encoding: Encoding,
        body: &[u8],
        max_rows: usize,
    ) -> Result<PredictRequest, ServiceError> {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(ServiceError::bad_request(
                "empty body; send a map with \"inputs\" (rows of numbers) or \"x\" (one row)",
            ));
        }
        let limits = Limits {
            max_rows,
            max_values: body.len(),
            too_many_rows: Cell::new(None),
        };
        let refuse = |what: &str, e: &dyn fmt::Display| {
            if let Some(rows) = limits.too_many_rows.get() {
                ServiceError::new(
                    ErrorKind::TooLarge,
                    format!("request has {rows} rows; this worker accepts at most {max_rows} per request (split it)"),
                )
            } else {
                ServiceError::bad_request(format!("invalid {what} body: {}", bounded(e)))
            }
        };
        let raw = match encoding {
            Encoding::Json => {
                let mut de = serde_json::Deserializer::from_slice(body);
                let raw = RawSeed(&limits)
                    .deserialize(&mut de)
                    .and_then(|r| de.end().map(|_| r));
                raw.map_err(|e| refuse("JSON", &e))?
            }
            Encoding::MsgPack => {
                let mut rest = body;
                let raw = RawSeed(&limits)
                    .deserialize(&mut rmp_serde::Deserializer::new(&mut rest))
                    .map_err(|e| refuse("MessagePack", &e))?;
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

/// The longest decoder message an error reply carries: it goes back in a header and the body,
/// and serde quotes whole strings of the input ("invalid type: string \"...\"").
const MAX_MESSAGE_CHARS: usize = 300;

/// `e`'s text, cut in the middle when long: the start says what was wrong, the end where.
fn bounded(e: &dyn fmt::Display) -> String {
    let text = e.to_string();
    let chars = text.chars().count();
    if chars <= MAX_MESSAGE_CHARS {
        return text;
    }
    let head: String = text.chars().take(200).collect();
    let tail: String = text.chars().skip(chars - 60).collect();
    format!("{head}... ({} characters cut) ...{tail}", chars - 260)
}

struct RawRequest {
    inputs: Option<Rows>,
    x: Option<Rows>,
    id: Option<String>,
}

/// What a body may hold, checked while it is read.
struct Limits {
    max_rows: usize,
    /// A value takes at least one byte, so a body holds at most this many.
    max_values: usize,
    /// How many rows `inputs` had, when more than `max_rows`: the error becomes a 413.
    too_many_rows: Cell<Option<usize>>,
}

struct RawSeed<'a>(&'a Limits);

impl<'de> DeserializeSeed<'de> for RawSeed<'_> {
    type Value = RawRequest;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawRequest, D::Error> {
        d.deserialize_map(RawVisitor(self.0))
    }
}

struct RawVisitor<'a>(&'a Limits);

impl<'de> Visitor<'de> for RawVisitor<'_> {
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
                "inputs" => raw.inputs = Some(map.next_value_seed(MatrixSeed(self.0))?),
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
struct MatrixSeed<'a>(&'a Limits);

impl<'de> DeserializeSeed<'de> for MatrixSeed<'_> {
    type Value = Rows;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Rows, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MatrixSeed<'_> {
    type Value = Rows;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("\"inputs\" as a list of rows, each a list of numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rows, A::Error> {
        // The declared length is only a hint, and an untrusted one: never reserve more
        // values than the body has bytes.
        let hint = seq.size_hint().unwrap_or(1).saturating_mul(8);
        let mut values = Vec::with_capacity(hint.min(self.0.max_values).min(1 << 16));
        let mut rows = 0usize;
        let mut features = 0usize;
        loop {
            if rows == self.0.max_rows {
                // Past the limit, only count the rest (skipping allocates nothing), so the
                // 413 can say how many rows came.
                let mut extra = 0usize;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    extra += 1;
                }
                if extra > 0 {
                    self.0.too_many_rows.set(Some(rows + extra));
                    return Err(de::Error::custom("too many rows"));
                }
                break;
            }
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
        Err(self.not_a_number(format_args!("the string {}", shown(v))))
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

    /// Issue 8, item 1: `81 a6 "inputs" dd ff ff ff ff` declares a four-billion-element array
    /// in ten bytes; decoding it must not reserve memory from that length.
    #[test]
    fn a_declared_length_is_never_trusted() {
        let mut body = vec![0x81, 0xa6];
        body.extend_from_slice(b"inputs");
        body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        let e = PredictRequest::decode(Encoding::MsgPack, &body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{}", e.message);
        // The same inside a row, and a row count over the limit answers 413 early.
        let mut body = vec![0x81, 0xa6];
        body.extend_from_slice(b"inputs");
        body.extend_from_slice(&[0x91, 0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert!(PredictRequest::decode(Encoding::MsgPack, &body).is_err());
        let rows = vec![vec![1.0]; 5];
        let body = PredictRequest::encode(Encoding::MsgPack, &rows, None);
        let e = PredictRequest::decode_limited(Encoding::MsgPack, &body, 4).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message);
        let e = PredictRequest::decode_limited(Encoding::Json, br#"{"inputs": [[1],[2],[3]]}"#, 2)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge, "{}", e.message);
        assert!(
            PredictRequest::decode_limited(Encoding::Json, br#"{"inputs": [[1],[2]]}"#, 2).is_ok()
        );
    }

    /// Found by `scripts/fuzz.sh` (request-json): a string in a row, or a body that is one
    /// long string, came back whole in the error message, so a 1 MB body got a reply with
    /// the same megabyte in a header and again in the body (over NATS's max_payload: the
    /// reply is never delivered).
    #[test]
    fn an_error_never_echoes_a_long_input() {
        let long = "[".repeat(5000);
        let body = format!(r#"{{"inputs": [[1, "{long}"]]}}"#);
        let e = json(&body).unwrap_err();
        assert!(
            e.message.len() < 400,
            "{} bytes: {}",
            e.message.len(),
            e.message
        );
        assert!(
            e.message.contains("inputs[0][1] is the string"),
            "{}",
            e.message
        );
        let body = format!(r#""{long}""#);
        let e = PredictRequest::decode(Encoding::Json, body.as_bytes()).unwrap_err();
        assert!(
            e.message.len() < 400,
            "{} bytes: {}",
            e.message.len(),
            e.message
        );
        let mut body = vec![0xda, 0x13, 0x88];
        body.extend_from_slice(long.as_bytes());
        let e = PredictRequest::decode(Encoding::MsgPack, &body).unwrap_err();
        assert!(
            e.message.len() < 400,
            "{} bytes: {}",
            e.message.len(),
            e.message
        );
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
}
