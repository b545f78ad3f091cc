//! Names of the HTTP mapping (`flotilla gateway`, the end of `docs/protocol.md`): the Open
//! Inference Protocol's binary tensor data header and the tensor names of dense and text
//! models. Spelled here, like every other name on the wire.

/// Request and response header: the length of the JSON header when binary tensor data
/// follows it in the body.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "Inference-Header-Content-Length";

/// The one input tensor of a dense or text model.
pub const INPUT_TENSOR: &str = "input";
/// Its numeric output tensor (the reply's `outputs`).
pub const OUTPUT_TENSOR: &str = "output";
/// A classifier's predicted labels (the reply's `labels`), a BYTES tensor.
pub const LABEL_TENSOR: &str = "label";
/// A text model's token count per text (the reply's `tokens`), an INT64 tensor.
pub const TOKENS_TENSOR: &str = "tokens";
