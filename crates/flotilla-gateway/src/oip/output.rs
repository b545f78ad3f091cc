//! The fleet's reply as Open Inference Protocol output tensors: `outputs` (rows of numbers,
//! each row possibly nested) becomes the tensor `output` of shape `[rows, ...per row]`, a
//! classifier's `labels` the BYTES tensor `label` of shape `[rows]`, and a text model's
//! `tokens` the INT64 tensor `tokens` of shape `[rows]`. Each output is written as
//! JSON `data`, or as a blob after the JSON header (the binary tensor data extension).

use std::fmt;

use bytes::{Bytes, BytesMut};
use flotilla_proto::Label;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::tensor::{Datatype, Tensor, Values};
use crate::error::{ApiError, ErrorKind};

pub use flotilla_proto::http::{
    INPUT_TENSOR as INPUT, LABEL_TENSOR as LABEL, OUTPUT_TENSOR as OUTPUT, TOKENS_TENSOR as TOKENS,
};

/// A successful reply body from the fleet, as far as the gateway reads it.
#[derive(Debug, Deserialize)]
pub struct FleetReply {
    pub outputs: Nested,
    #[serde(default)]
    pub labels: Option<Vec<Label>>,
    /// A text model's token count per text.
    #[serde(default)]
    pub tokens: Option<Vec<i64>>,
    #[serde(default)]
    pub version: Option<u64>,
}

impl FleetReply {
    pub fn decode(body: &[u8], encoding: flotilla_proto::Encoding) -> Result<FleetReply, ApiError> {
        let decoded = match encoding {
            flotilla_proto::Encoding::MsgPack => {
                rmp_serde::from_slice(body).map_err(|e| e.to_string())
            }
            flotilla_proto::Encoding::Json => {
                serde_json::from_slice(body).map_err(|e| e.to_string())
            }
        };
        decoded.map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("the fleet's reply could not be read: {e}"),
            )
        })
    }

    /// The output tensors, numbers as `datatype` (FP32 or FP64).
    pub fn tensors(self, datatype: Datatype) -> Result<Vec<Tensor>, ApiError> {
        let Nested { values, shape } = self.outputs;
        let expected: usize = shape.iter().product();
        if values.len() != expected {
            return Err(ApiError::new(
                ErrorKind::Internal,
                format!(
                    "the fleet's outputs are ragged: {} values in a {shape:?} shape",
                    values.len()
                ),
            ));
        }
        let rows = shape.first().copied().unwrap_or(0);
        let values = match datatype {
            Datatype::Fp64 => Values::F64(values),
            _ => Values::F32(values.iter().map(|&v| v as f32).collect()),
        };
        let mut out = vec![Tensor {
            name: OUTPUT.into(),
            shape,
            values,
        }];
        if let Some(labels) = self.labels {
            if labels.len() != rows {
                return Err(ApiError::new(
                    ErrorKind::Internal,
                    format!("the fleet sent {} labels for {rows} rows", labels.len()),
                ));
            }
            out.push(Tensor {
                name: LABEL.into(),
                shape: vec![labels.len()],
                values: Values::Bytes(labels.iter().map(|l| Bytes::from(l.to_string())).collect()),
            });
        }
        if let Some(tokens) = self.tokens {
            if tokens.len() != rows {
                return Err(ApiError::new(
                    ErrorKind::Internal,
                    format!(
                        "the fleet sent {} token counts for {rows} rows",
                        tokens.len()
                    ),
                ));
            }
            out.push(Tensor {
                name: TOKENS.into(),
                shape: vec![tokens.len()],
                values: Values::I64(tokens),
            });
        }
        Ok(out)
    }
}

/// Numbers nested to any depth, flattened row-major, with the shape read from the first
/// element at each depth (checked against the count by [`FleetReply::tensors`]).
#[derive(Debug, Default, PartialEq)]
pub struct Nested {
    pub values: Vec<f64>,
    pub shape: Vec<usize>,
}

impl<'de> Deserialize<'de> for Nested {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Nested::default();
        d.deserialize_seq(Level {
            out: &mut out,
            depth: 0,
            first: true,
        })?;
        Ok(out)
    }
}

struct Level<'a> {
    out: &'a mut Nested,
    depth: usize,
    /// Whether every enclosing list was at its first element: this list sets the shape.
    first: bool,
}

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("\"outputs\" as lists of numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut count = 0usize;
        loop {
            let seed = Level {
                out: &mut *self.out,
                depth: self.depth + 1,
                first: self.first && count == 0,
            };
            if seq.next_element_seed(seed)?.is_none() {
                break;
            }
            count += 1;
        }
        if self.first {
            if self.out.shape.len() <= self.depth {
                self.out.shape.resize(self.depth + 1, 0);
            }
            self.out.shape[self.depth] = count;
        }
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.out.values.push(v);
        Ok(())
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
}

/// An infer response: its JSON header and the blobs that follow it.
pub struct Written {
    pub body: Bytes,
    /// The header's length when binary data follows it (`Inference-Header-Content-Length`).
    pub header_length: Option<usize>,
}

/// Writes the response for `outputs`, each with whether it goes as binary data.
pub fn write_response(
    model: &str,
    version: Option<u64>,
    id: Option<&str>,
    outputs: &[(&Tensor, bool)],
) -> Result<Written, ApiError> {
    #[derive(Serialize)]
    struct Header<'a> {
        model_name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        model_version: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        outputs: Vec<OutputHeader<'a>>,
    }
    #[derive(Serialize)]
    struct OutputHeader<'a> {
        name: &'a str,
        datatype: &'static str,
        shape: &'a [usize],
        #[serde(skip_serializing_if = "Option::is_none")]
        parameters: Option<BinarySize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<Data<'a>>,
    }
    #[derive(Serialize)]
    struct BinarySize {
        binary_data_size: usize,
    }
    let mut blobs = BytesMut::new();
    let mut headers = Vec::with_capacity(outputs.len());
    for (tensor, binary) in outputs {
        let (parameters, data) = if *binary {
            let before = blobs.len();
            tensor.values.write_binary(&mut blobs);
            let binary_data_size = blobs.len() - before;
            (Some(BinarySize { binary_data_size }), None)
        } else {
            (None, Some(Data(&tensor.values)))
        };
        headers.push(OutputHeader {
            name: &tensor.name,
            datatype: tensor.values.datatype_name(),
            shape: &tensor.shape,
            parameters,
            data,
        });
    }
    let header = Header {
        model_name: model,
        model_version: version.map(|v| v.to_string()),
        id,
        outputs: headers,
    };
    let json = serde_json::to_vec(&header).map_err(|e| {
        ApiError::new(
            ErrorKind::Internal,
            format!("encoding the response failed: {e}"),
        )
    })?;
    if blobs.is_empty() && outputs.iter().all(|(_, binary)| !binary) {
        return Ok(Written {
            body: Bytes::from(json),
            header_length: None,
        });
    }
    let header_length = json.len();
    let mut body = BytesMut::with_capacity(json.len() + blobs.len());
    body.extend_from_slice(&json);
    body.extend_from_slice(&blobs);
    Ok(Written {
        body: body.freeze(),
        header_length: Some(header_length),
    })
}

/// A tensor's values as a flat JSON list.
struct Data<'a>(&'a Values);

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Values::F32(v) => s.collect_seq(v),
            Values::F64(v) => s.collect_seq(v),
            Values::I64(v) => s.collect_seq(v),
            Values::Bytes(v) => s.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oip::tensor::{decode_request, predict_body};

    #[test]
    fn nested_outputs_keep_their_shape() {
        let n: Nested =
            serde_json::from_str("[[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [11, 12]]]")
                .unwrap();
        assert_eq!(n.shape, vec![2, 3, 2]);
        assert_eq!(n.values.len(), 12);
        let reply: FleetReply =
            serde_json::from_str(r#"{"outputs": [[0.5, 0.5], [1]], "model": "m", "version": 1}"#)
                .unwrap();
        assert!(
            reply.tensors(Datatype::Fp32).is_err(),
            "ragged outputs are refused"
        );
    }

    #[test]
    fn a_text_models_tokens_become_an_int64_tensor() {
        let reply: FleetReply = serde_json::from_str(
            r#"{"outputs": [[0.6, 0.8], [1, 0]], "tokens": [3, 5], "model": "m", "version": 1}"#,
        )
        .unwrap();
        let tensors = reply.tensors(Datatype::Fp32).unwrap();
        assert_eq!(tensors[1].name, TOKENS);
        assert_eq!(tensors[1].shape, vec![2]);
        assert_eq!(tensors[1].values, Values::I64(vec![3, 5]));
        assert_eq!(tensors[1].values.datatype_name(), "INT64");
        let mut blob = BytesMut::new();
        tensors[1].values.write_binary(&mut blob);
        assert_eq!(&blob[..8], &3i64.to_le_bytes());
        let short: FleetReply =
            serde_json::from_str(r#"{"outputs": [[0.6, 0.8], [1, 0]], "tokens": [3]}"#).unwrap();
        assert!(short.tensors(Datatype::Fp32).is_err(), "a count per row");
    }

    #[test]
    fn binary_inputs_and_outputs_round_trip() {
        let json = br#"{"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32",
                        "parameters": {"binary_data_size": 16}}],
                        "outputs": [{"name": "output", "parameters": {"binary_data": true}}]}"#;
        let mut body = json.to_vec();
        for v in [1.0f32, 2.0, 3.0, 4.5] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        let request = decode_request(&body, Some(json.len())).unwrap();
        assert_eq!(
            request.inputs[0].values,
            Values::F32(vec![1.0, 2.0, 3.0, 4.5])
        );
        assert_eq!(request.outputs, Some(vec![("output".to_string(), true)]));
        let nats: serde_json::Value =
            rmp_serde::from_slice(&predict_body(&request.inputs).unwrap()).unwrap();
        assert_eq!(
            nats,
            serde_json::json!({"inputs": [[1.0, 2.0], [3.0, 4.5]]})
        );

        let tensor = Tensor {
            name: "output".into(),
            shape: vec![2, 1],
            values: Values::F32(vec![0.25, 8.0]),
        };
        let written = write_response("m", Some(3), None, &[(&tensor, true)]).unwrap();
        let n = written.header_length.unwrap();
        let header: serde_json::Value = serde_json::from_slice(&written.body[..n]).unwrap();
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(header["model_version"], "3");
        assert_eq!(&written.body[n..n + 4], &0.25f32.to_le_bytes());
    }

    #[test]
    fn bytes_tensors_become_text_rows() {
        let json = br#"{"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": ["a b", ""]}]}"#;
        let request = decode_request(json, None).unwrap();
        let nats: serde_json::Value =
            rmp_serde::from_slice(&predict_body(&request.inputs).unwrap()).unwrap();
        assert_eq!(nats, serde_json::json!({"inputs": ["a b", ""]}));
        let mut blob = Vec::new();
        for s in ["héllo", "x"] {
            blob.extend_from_slice(&(s.len() as u32).to_le_bytes());
            blob.extend_from_slice(s.as_bytes());
        }
        let head = format!(
            r#"{{"inputs": [{{"name": "input", "shape": [2, 1], "datatype": "BYTES", "parameters": {{"binary_data_size": {}}}}}]}}"#,
            blob.len()
        );
        let mut body = head.clone().into_bytes();
        body.extend_from_slice(&blob);
        let request = decode_request(&body, Some(head.len())).unwrap();
        let nats: serde_json::Value =
            rmp_serde::from_slice(&predict_body(&request.inputs).unwrap()).unwrap();
        assert_eq!(nats, serde_json::json!({"inputs": ["héllo", "x"]}));
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let cases = [
            (&br#"{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]}"#[..], "holds 3 values but 2"),
            (br#"{"inputs": [{"name": "input", "shape": [1, 1], "datatype": "INT8", "data": [1]}]}"#, "INT8"),
            (br#"{"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP64", "data": ["a"]}]}"#, "needs numbers"),
            (br#"{"inputs": []}"#, "no inputs"),
            (br#"{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}"#, "only 0 bytes"),
        ];
        for (body, expected) in cases {
            let err = decode_request(body, None).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        assert!(decode_request(b"{}", Some(10)).is_err());
    }
}
