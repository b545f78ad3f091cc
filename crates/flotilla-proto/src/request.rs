//! Decoding a predict request body into one dense row-major buffer, with errors that say
//! exactly where the input was wrong, and encoding one the way a client sends it.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::encoding::Encoding;
use crate::error::ServiceError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

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
}
