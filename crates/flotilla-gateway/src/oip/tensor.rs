//! Open Inference Protocol tensors, both ways: an infer request (a JSON header, then the
//! binary tensor data extension's blobs) becomes the NATS predict body; the fleet's reply
//! becomes output tensors, written as JSON `data` or as binary blobs after the header.
//!
//! Numbers travel to the fleet as MessagePack rows (`{"inputs": [[...], ...]}`), each row flat,
//! which every worker version accepts; FP32 values stay 32-bit on the wire. Strings (BYTES,
//! text models) travel as `{"inputs": ["text", ...]}`.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ApiError;

/// The element types the gateway translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    Fp32,
    Fp64,
    Bytes,
}

impl Datatype {
    pub fn parse(name: &str) -> Result<Datatype, ApiError> {
        match name {
            "FP32" => Ok(Datatype::Fp32),
            "FP64" => Ok(Datatype::Fp64),
            "BYTES" => Ok(Datatype::Bytes),
            other => Err(ApiError::bad_request(format!(
                "datatype {other:?} is not supported; use FP32, FP64 or BYTES"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }
}

/// The values of one tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<Bytes>),
    /// Outputs only (a text model's token counts): no input is integer-typed.
    I64(Vec<i64>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::Bytes(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }

    /// The Open Inference Protocol name of the values' type.
    pub fn datatype_name(&self) -> &'static str {
        match self {
            Values::F32(_) => Datatype::Fp32.as_str(),
            Values::F64(_) => Datatype::Fp64.as_str(),
            Values::Bytes(_) => Datatype::Bytes.as_str(),
            Values::I64(_) => "INT64",
        }
    }

    /// The binary tensor data form: little-endian numbers; each BYTES element as a 4-byte
    /// little-endian length, then its bytes.
    pub fn write_binary(&self, out: &mut BytesMut) {
        match self {
            Values::F32(v) => v.iter().for_each(|x| out.put_f32_le(*x)),
            Values::F64(v) => v.iter().for_each(|x| out.put_f64_le(*x)),
            Values::I64(v) => v.iter().for_each(|x| out.put_i64_le(*x)),
            Values::Bytes(v) => v.iter().for_each(|b| {
                out.put_u32_le(b.len() as u32);
                out.put_slice(b);
            }),
        }
    }
}

/// One named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Values,
}

impl Tensor {
    /// Values per row: the product of every dimension after the first.
    pub fn row_width(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
}

/// The JSON header of an infer request.
#[derive(Debug, Deserialize)]
pub struct InferHeader {
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    pub inputs: Vec<InputHeader>,
    pub outputs: Option<Vec<OutputRequest>>,
}

#[derive(Debug, Deserialize)]
pub struct InputHeader {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    pub data: Option<JsonData>,
}

#[derive(Debug, Deserialize)]
pub struct OutputRequest {
    pub name: String,
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

/// An infer request, decoded and checked.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// The outputs asked for, each with whether it goes back as binary data; `None`: all.
    pub outputs: Option<Vec<(String, bool)>>,
    /// The default for outputs not asked for by name (`binary_data_output`).
    pub binary_output: bool,
}

/// Splits and decodes an infer request body. `header_length` is the
/// `Inference-Header-Content-Length` header, when the body carries binary tensor data.
pub fn decode_request(body: &[u8], header_length: Option<usize>) -> Result<InferRequest, ApiError> {
    let (json, mut blobs) = match header_length {
        Some(n) if n > body.len() => {
            return Err(ApiError::bad_request(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let header: InferHeader = serde_json::from_slice(json)
        .map_err(|e| ApiError::bad_request(format!("invalid inference request JSON: {e}")))?;
    if header.inputs.is_empty() {
        return Err(ApiError::bad_request("the request has no inputs"));
    }
    let mut inputs = Vec::with_capacity(header.inputs.len());
    for input in header.inputs {
        inputs.push(decode_input(input, &mut blobs)?);
    }
    if !blobs.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            blobs.len()
        )));
    }
    let binary_output = flag(&header.parameters, "binary_data_output")?.unwrap_or(false);
    let outputs = match header.outputs {
        None => None,
        Some(list) => Some(
            list.into_iter()
                .map(|o| {
                    let binary = flag(&o.parameters, "binary_data")?.unwrap_or(binary_output);
                    Ok((o.name, binary))
                })
                .collect::<Result<_, ApiError>>()?,
        ),
    };
    Ok(InferRequest {
        id: header.id,
        inputs,
        outputs,
        binary_output,
    })
}

fn flag(
    parameters: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<bool>, ApiError> {
    match parameters.get(name) {
        None => Ok(None),
        Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::bad_request(format!(
            "parameter {name} must be true or false, got {other}"
        ))),
    }
}

fn decode_input(input: InputHeader, blobs: &mut &[u8]) -> Result<Tensor, ApiError> {
    let name = input.name;
    let datatype = Datatype::parse(&input.datatype)
        .map_err(|e| ApiError::bad_request(format!("input {name:?}: {e}")))?;
    let shape: Vec<usize> = input
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            ApiError::bad_request(format!(
                "input {name:?}: shape {:?} has a negative dimension",
                input.shape
            ))
        })?;
    if shape.is_empty() || shape[0] == 0 {
        return Err(ApiError::bad_request(format!(
            "input {name:?}: shape {shape:?} must start with the number of rows (at least 1)"
        )));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            ApiError::bad_request(format!("input {name:?}: shape {shape:?} is too large"))
        })?;
    let size = match input.parameters.get("binary_data_size") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "input {name:?}: binary_data_size must be a non-negative integer"
            ))
        })? as usize),
    };
    let values = match (size, input.data) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(format!(
                "input {name:?} has both \"data\" and binary_data_size; send one"
            )))
        }
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "input {name:?} has no \"data\" and no binary_data_size"
            )))
        }
        (Some(size), None) => {
            if size > blobs.len() {
                return Err(ApiError::bad_request(format!(
                    "input {name:?}: binary_data_size is {size} but only {} bytes of binary data are left",
                    blobs.len()
                )));
            }
            let (blob, rest) = blobs.split_at(size);
            *blobs = rest;
            from_binary(datatype, blob, count)
                .map_err(|m| ApiError::bad_request(format!("input {name:?}: {m}")))?
        }
        (None, Some(data)) => from_json(datatype, data)
            .map_err(|m| ApiError::bad_request(format!("input {name:?}: {m}")))?,
    };
    if values.len() != count {
        return Err(ApiError::bad_request(format!(
            "input {name:?}: shape {shape:?} holds {count} values but {} were sent",
            values.len()
        )));
    }
    Ok(Tensor {
        name,
        shape,
        values,
    })
}

fn from_binary(datatype: Datatype, blob: &[u8], count: usize) -> Result<Values, String> {
    let fixed = |width: usize| {
        if blob.len() != count * width {
            Err(format!(
                "binary data is {} bytes; {count} {} values take {}",
                blob.len(),
                datatype.as_str(),
                count * width
            ))
        } else {
            Ok(blob.chunks_exact(width))
        }
    };
    Ok(match datatype {
        Datatype::Fp32 => Values::F32(
            fixed(4)?
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        ),
        Datatype::Fp64 => Values::F64(
            fixed(8)?
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        Datatype::Bytes => {
            let mut out = Vec::with_capacity(count);
            let mut rest = blob;
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err("BYTES binary data ends inside an element's length".into());
                }
                let (len, tail) = rest.split_at(4);
                let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                if len > tail.len() {
                    return Err(format!(
                        "a BYTES element says {len} bytes but {} are left",
                        tail.len()
                    ));
                }
                out.push(Bytes::copy_from_slice(&tail[..len]));
                rest = &tail[len..];
            }
            Values::Bytes(out)
        }
    })
}

fn from_json(datatype: Datatype, data: JsonData) -> Result<Values, String> {
    match (datatype, data) {
        (Datatype::Fp32, JsonData::Numbers(v)) => {
            Ok(Values::F32(v.iter().map(|&x| x as f32).collect()))
        }
        (Datatype::Fp64, JsonData::Numbers(v)) => Ok(Values::F64(v)),
        (Datatype::Bytes, JsonData::Strings(v)) => {
            Ok(Values::Bytes(v.into_iter().map(Bytes::from).collect()))
        }
        // An empty list decodes as numbers; it is empty in any type.
        (Datatype::Bytes, JsonData::Numbers(v)) if v.is_empty() => Ok(Values::Bytes(Vec::new())),
        (Datatype::Bytes, JsonData::Numbers(_)) => {
            Err("datatype BYTES needs strings in \"data\", got numbers".into())
        }
        (dt, _) => Err(format!(
            "datatype {} needs numbers in \"data\", got strings",
            dt.as_str()
        )),
    }
}

/// A tensor's JSON `data`, flat or nested, flattened row-major as it is read.
#[derive(Debug, PartialEq)]
pub enum JsonData {
    Numbers(Vec<f64>),
    Strings(Vec<String>),
}

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = JsonData::Numbers(Vec::new());
        d.deserialize_seq(Flatten { out: &mut out })?;
        Ok(out)
    }
}

struct Flatten<'a> {
    out: &'a mut JsonData,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of numbers or of strings, flat or nested")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten { out: self.out })?.is_some() {}
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        match self.out {
            JsonData::Numbers(n) => {
                n.push(v);
                Ok(())
            }
            JsonData::Strings(_) => Err(E::custom("\"data\" mixes strings and numbers")),
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        match self.out {
            JsonData::Strings(s) => s.push(v.to_owned()),
            JsonData::Numbers(n) if n.is_empty() => {
                *self.out = JsonData::Strings(vec![v.to_owned()])
            }
            JsonData::Numbers(_) => return Err(E::custom("\"data\" mixes numbers and strings")),
        }
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(
            "\"data\" holds a boolean; BOOL tensors are not supported",
        ))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom("\"data\" holds null"))
    }
}

/// The NATS predict body for `inputs`: `{"inputs": rows}` for one input, `{"inputs": {name:
/// rows, ...}}` (named inputs) for several.
pub fn predict_body(inputs: &[Tensor]) -> Result<Bytes, ApiError> {
    struct Body<'a>(&'a [Tensor]);
    impl Serialize for Body<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(1))?;
            match self.0 {
                [one] => map.serialize_entry("inputs", &Rows(one))?,
                many => {
                    let named: Vec<(&str, Rows)> =
                        many.iter().map(|t| (t.name.as_str(), Rows(t))).collect();
                    map.serialize_entry("inputs", &NamedRows(&named))?
                }
            }
            map.end()
        }
    }
    rmp_serde::to_vec_named(&Body(inputs))
        .map(Bytes::from)
        .map_err(|e| ApiError::bad_request(format!("encoding the request for the fleet: {e}")))
}

struct NamedRows<'a>(&'a [(&'a str, Rows<'a>)]);

impl Serialize for NamedRows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// A tensor as rows: each row a flat list, or for BYTES with one value per row, the string.
struct Rows<'a>(&'a Tensor);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let width = self.0.row_width().max(1);
        match &self.0.values {
            Values::F32(v) => s.collect_seq(v.chunks(width)),
            Values::F64(v) => s.collect_seq(v.chunks(width)),
            Values::I64(v) => s.collect_seq(v.chunks(width)),
            Values::Bytes(v) if width == 1 => s.collect_seq(v.iter().map(Text)),
            Values::Bytes(v) => s.collect_seq(v.chunks(width).map(TextRow)),
        }
    }
}

struct Text<'a>(&'a Bytes);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => s.serialize_str(text),
            Err(e) => Err(serde::ser::Error::custom(format!(
                "a BYTES element is not UTF-8 text ({e})"
            ))),
        }
    }
}

struct TextRow<'a>(&'a [Bytes]);

impl Serialize for TextRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(Text))
    }
}
