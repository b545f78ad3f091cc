//! Decoding a predict request body, with errors that say exactly where the input was wrong,
//! and encoding one the way a client sends it.
//!
//! `inputs` may be rows (lists of numbers of any nesting, or strings for text models), a
//! binary tensor (MessagePack), or a map from input name to either; `x` is one row. Rows are
//! streamed into one flat buffer per input. Nothing is ever sized from a length the body
//! declares: a MessagePack array header can claim four billion elements in five bytes, so
//! buffers grow with the values actually read, and a binary tensor's shape is checked
//! against the bytes it really has before anything is allocated for it.
//!
//! # Layout
//! - `nested`: rows as lists, their shape learned from the first row.
//! - `binary`: `inputs` as a map: a binary tensor or named inputs.

mod binary;
mod nested;

use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::encoding::Encoding;
use crate::error::{ErrorKind, ServiceError};
use nested::{Field, Nest};

/// The element type of a binary tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorDType {
    F32,
    F64,
}

impl TensorDType {
    pub fn as_str(self) -> &'static str {
        match self {
            TensorDType::F32 => "f32",
            TensorDType::F64 => "f64",
        }
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            TensorDType::F32 => 4,
            TensorDType::F64 => 8,
        }
    }
}

/// The values of one input, flat and row-major, as they came: numbers from lists are f64,
/// a binary tensor keeps its dtype, text rows are strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F64(Vec<f64>),
    F32(Vec<f32>),
    Text(Vec<String>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::F64(v) => v.len(),
            Values::F32(v) => v.len(),
            Values::Text(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_text(&self) -> bool {
        matches!(self, Values::Text(_))
    }
}

/// One input of a request: `rows` rows of shape `row_shape` as sent (`[]` for scalar or text
/// rows, `[4]` for flat rows of four numbers, `[1, 8, 8]` for nested ones).
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub rows: usize,
    pub row_shape: Vec<usize>,
    pub values: Values,
    /// The dtype it was sent in when it came as a binary tensor.
    pub binary: Option<TensorDType>,
}

impl InputTensor {
    /// Values in one row.
    pub fn row_len(&self) -> usize {
        self.row_shape.iter().product()
    }
}

/// A request's inputs: one unnamed input (rows, `x` or a binary tensor) or named ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    Unnamed(InputTensor),
    Named(Vec<(String, InputTensor)>),
}

impl Inputs {
    /// Every input, with its name when it has one.
    pub fn tensors(&self) -> impl Iterator<Item = (Option<&str>, &InputTensor)> {
        let (unnamed, named) = match self {
            Inputs::Unnamed(t) => (Some((None, t)), &[][..]),
            Inputs::Named(v) => (None, v.as_slice()),
        };
        unnamed
            .into_iter()
            .chain(named.iter().map(|(n, t)| (Some(n.as_str()), t)))
    }
}

/// A decoded predict request.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictRequest {
    pub inputs: Inputs,
    /// True for the single-row `x` form, whose reply also carries `y_pred`.
    pub single: bool,
    pub id: Option<String>,
}

impl PredictRequest {
    /// Rows of the request (every named input has as many; the worker checks).
    pub fn rows(&self) -> usize {
        match &self.inputs {
            Inputs::Unnamed(t) => t.rows,
            Inputs::Named(v) => v.first().map_or(0, |(_, t)| t.rows),
        }
    }

    /// The form the reply's `outputs` take: a binary tensor when any input came as one
    /// (f64 only if every binary input was f64), else lists.
    pub fn reply_form(&self) -> Option<TensorDType> {
        // f64 if every binary input is f64, f32 if any is not, None if none is binary.
        self.inputs
            .tensors()
            .filter_map(|(_, t)| t.binary)
            .reduce(|form, d| match (form, d) {
                (TensorDType::F64, TensorDType::F64) => TensorDType::F64,
                _ => TensorDType::F32,
            })
    }

    /// Decodes and checks a body: a map with `inputs` or `x`. Every refusal names the
    /// offending field, row and column.
    pub fn decode(encoding: Encoding, body: &[u8]) -> Result<PredictRequest, ServiceError> {
        PredictRequest::decode_limited(encoding, body, usize::MAX)
    }

    /// [`PredictRequest::decode`], refusing with 413 as soon as an input has more than
    /// `max_rows` rows: a huge body is not decoded to the end only to be refused.
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
        let limits = Limits::new(max_rows, body.len());
        let too_large = |rows: usize| {
            ServiceError::new(
                ErrorKind::TooLarge,
                format!("request has {rows} rows; this worker accepts at most {max_rows} per request (split it)"),
            )
        };
        let refuse = |what: &str, e: &dyn fmt::Display| match limits.too_many_rows.get() {
            Some(rows) => too_large(rows),
            None => ServiceError::bad_request(format!("invalid {what} body: {}", bounded(e))),
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
            (Some(inputs), None) => (inputs, false),
            (None, Some(row)) => (Inputs::Unnamed(row), true),
            (None, None) => {
                return Err(ServiceError::bad_request(
                    "body has neither \"inputs\" (rows of numbers) nor \"x\" (one row)",
                ))
            }
        };
        for (name, t) in inputs.tensors() {
            if t.rows > max_rows {
                return Err(too_large(t.rows));
            }
            if t.rows == 0 || (t.values.is_empty() && !t.values.is_text()) {
                let field = match (name, single) {
                    (Some(n), _) => format!("inputs[{n:?}]"),
                    (None, true) => "\"x\"".into(),
                    (None, false) => "\"inputs\"".into(),
                };
                return Err(ServiceError::bad_request(format!(
                    "{field} is empty; send at least one row with at least one number"
                )));
            }
        }
        Ok(PredictRequest {
            inputs,
            single,
            id: raw.id,
        })
    }

    /// Encodes a request of flat rows the way the client sends it.
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

    /// Encodes a request whose `inputs` is one binary tensor (MessagePack): `rows` rows of
    /// `row_shape` f32 values.
    pub fn encode_binary_f32(
        rows: usize,
        row_shape: &[usize],
        values: &[f32],
        id: Option<&str>,
    ) -> Bytes {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape: Vec<usize> = std::iter::once(rows)
            .chain(row_shape.iter().copied())
            .collect();
        #[derive(Serialize)]
        struct Tensor<'a> {
            shape: &'a [usize],
            dtype: &'a str,
            #[serde(with = "crate::reply::as_bytes")]
            data: &'a [u8],
        }
        #[derive(Serialize)]
        struct Wire<'a> {
            inputs: Tensor<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a str>,
        }
        let wire = Wire {
            inputs: Tensor {
                shape: &shape,
                dtype: "f32",
                data: &data,
            },
            id,
        };
        Encoding::MsgPack
            .encode(&wire)
            .expect("a binary tensor always encodes")
    }
}

struct RawRequest {
    inputs: Option<Inputs>,
    x: Option<InputTensor>,
    id: Option<String>,
}

/// What a body may hold, checked while it is read.
pub(crate) struct Limits {
    pub(crate) max_rows: usize,
    /// A value takes at least one byte, so a body holds at most this many.
    pub(crate) max_values: usize,
    /// How many rows an input had, when more than `max_rows`: the error becomes a 413.
    pub(crate) too_many_rows: Cell<Option<usize>>,
}

impl Limits {
    pub(crate) fn new(max_rows: usize, max_values: usize) -> Limits {
        Limits {
            max_rows,
            max_values,
            too_many_rows: Cell::new(None),
        }
    }
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
                "inputs" => raw.inputs = Some(map.next_value_seed(InputsSeed(self.0))?),
                "x" => raw.x = Some(map.next_value_seed(XSeed(self.0))?),
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
pub(crate) struct KeyName(pub(crate) String);

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

/// `inputs`: rows (a list) or a map (a binary tensor, or named inputs).
struct InputsSeed<'a>(&'a Limits);

impl<'de> DeserializeSeed<'de> for InputsSeed<'_> {
    type Value = Inputs;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Inputs, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for InputsSeed<'_> {
    type Value = Inputs;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(
            "\"inputs\" as a list of rows, a binary tensor, or a map from input name to rows",
        )
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Inputs, A::Error> {
        Nest::new(self.0, Field::Inputs)
            .rows(seq)
            .map(Inputs::Unnamed)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Inputs, A::Error> {
        binary::MapSeed {
            limits: self.0,
            name: None,
        }
        .read(map)
    }
}

/// `x`: one row (a list, a number or a string).
struct XSeed<'a>(&'a Limits);

impl<'de> DeserializeSeed<'de> for XSeed<'_> {
    type Value = InputTensor;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<InputTensor, D::Error> {
        Nest::new(self.0, Field::X).one_row(d)
    }
}

#[cfg(test)]
mod tests;

/// The longest decoder message an error reply carries: it goes back in a header and the body,
/// and serde quotes whole strings of the input ("invalid type: string \"...\"").
const MAX_MESSAGE_CHARS: usize = 300;

/// `e`'s text, cut in the middle when long: the start says what was wrong, the end where.
/// (Found by `scripts/fuzz.sh`: a 1 MB string came back twice in a reply over NATS's
/// max_payload, which was then never delivered.)
fn bounded(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let chars = text.chars().count();
    if chars <= MAX_MESSAGE_CHARS {
        return text;
    }
    let head: String = text.chars().take(200).collect();
    let tail: String = text.chars().skip(chars - 60).collect();
    format!("{head}... ({} characters cut) ...{tail}", chars - 260)
}
