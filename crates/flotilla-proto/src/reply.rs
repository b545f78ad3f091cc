//! Reply bodies: what a worker writes ([`PredictReply`], borrowing its outputs so nothing is
//! copied) and what a client reads ([`Prediction`]).

use std::fmt;

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::encoding::Encoding;
use crate::headers::{CONTENT_TYPE, VERSION_HEADER};

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

/// The body of a successful reply. `L` is whatever label type the server holds (anything that
/// serialises as an integer or a string).
#[derive(Serialize)]
pub struct PredictReply<'a, L: Serialize = Label> {
    pub outputs: MatrixRef<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<&'a [L]>,
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

/// Reply headers for a success.
pub fn reply_headers(encoding: Encoding, version: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, encoding.content_type());
    h.insert(VERSION_HEADER, version.to_string());
    h
}
