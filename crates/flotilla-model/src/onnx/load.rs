//! From an ONNX file's bytes to an optimised tract plan and a [`Signature`], refusing with a
//! message that names what was expected: an unsupported operator (by name and node), an
//! input without a name, a dtype flotilla does not serve, a per-row dimension that is not
//! fixed, or a file that does not decode.
//!
//! The ONNX protobuf is read once and looked at before tract sees it: that is where the
//! operators are checked, where a blank batch dimension (skl2onnx's default) becomes the
//! symbol `N`, and where a classifier's class labels are read from its attributes.

use tract_onnx::pb::{self, tensor_proto::DataType, tensor_shape_proto::dimension, type_proto};
use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoRunnable, TDim, TypedModel, TypedRunnableModel,
};
use tract_onnx::tract_hir::internal::{DatumType, DimLike};

use crate::{invalid, DType, Label, ModelError, Signature, TensorSpec};

/// The name the batch dimension gets when the file leaves it blank or names it otherwise.
const BATCH: &str = "N";

/// Everything [`super::Onnx`] needs, built once per loaded version.
pub(crate) struct Loaded {
    pub plan: std::sync::Arc<TypedRunnableModel>,
    /// A second plan fixed to one row, for single-row chunks: tract specialises some
    /// operators for a known batch size (the example CNN's one row: 15.8 us symbolic, 5.4 us
    /// fixed). Only for small files, since it holds the weights a second time.
    pub single_row: Option<std::sync::Arc<TypedRunnableModel>>,
    pub signature: Signature,
    /// The plan's outputs: `outputs`, then (when labels are not derived) the label output.
    pub outputs: Outputs,
    /// A fixed batch size from the file, when its first dimension is a number: batches then
    /// run in chunks of exactly that many rows.
    pub fixed_batch: Option<usize>,
}

/// How a classifier's labels are produced.
pub(crate) enum Outputs {
    /// `outputs` only: not a classifier.
    Plain,
    /// Labels are the class labels at the argmax of the probabilities (tract's own label
    /// output is wrong for two-class tree ensembles, and string class labels do not load).
    Derived(Vec<Label>),
    /// Labels come from the model's `label` output, the plan's second output.
    FromModel,
}

pub(crate) fn load(bytes: &[u8]) -> Result<Loaded, ModelError> {
    let proto = super::ml::framework()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| ModelError::Corrupt(format!("{e:#}")))?;
    load_proto(proto)
}

/// [`load`] from the decoded protobuf.
fn load_proto(mut proto: pb::ModelProto) -> Result<Loaded, ModelError> {
    let onnx = super::ml::framework();
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| ModelError::Corrupt("the model has no graph".into()))?;
    super::ml::rewrite_tree_regressors(graph)?;
    check_operators(graph, &onnx.op_register)?;
    let (inputs, fixed_batch) = inputs(graph)?;

    let output_names: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let first = output_names
        .first()
        .ok_or_else(|| invalid("outputs", "the model has no outputs"))?
        .clone();
    let classifier = output_names.iter().any(|n| n == "label")
        && output_names.iter().any(|n| n == "probabilities");
    let class_labels = if classifier {
        class_labels(graph, "label")
    } else {
        None
    };
    if class_labels.is_some() {
        // The labels will come from the probabilities: make string class labels integers,
        // which tract can run (it cannot give a string label output a default value).
        integer_class_labels(graph);
    }
    let wanted: Vec<&str> = match (classifier, &class_labels) {
        (false, _) => vec![first.as_str()],
        (true, Some(_)) => vec!["probabilities"],
        (true, None) => vec!["probabilities", "label"],
    };

    // Only what replies use: tract then prunes whatever else the graph computes.
    graph.output.retain(|o| wanted.contains(&o.name.as_str()));
    graph
        .output
        .sort_by_key(|o| wanted.iter().position(|w| *w == o.name));
    let model = onnx
        .model_for_proto_model(&proto)
        .map_err(|e| tract_error(&e))?;
    let typed = model.into_typed().map_err(|e| tract_error(&e))?;
    let specs = wanted
        .iter()
        .enumerate()
        .map(|(i, name)| output_spec(&typed, i, name, fixed_batch))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = typed
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| tract_error(&e))?;
    let single_row = match fixed_batch {
        None if weights_bytes(&proto) <= SINGLE_ROW_PLAN_MAX_BYTES => single_row_plan(&proto),
        _ => None,
    };

    let mut specs = specs.into_iter();
    let output = specs.next().expect("one output at least");
    let (labels, outputs) = match class_labels {
        Some(classes) => {
            if output.shape != [classes.len()] {
                return Err(invalid(
                    "probabilities",
                    format!(
                        "has per-row shape {:?} but the classifier has {} classes",
                        output.shape,
                        classes.len()
                    ),
                ));
            }
            let dtype = if classes.iter().all(|c| matches!(c, Label::Index(_))) {
                DType::I64
            } else {
                DType::String
            };
            let spec = TensorSpec::new("label", vec![], dtype);
            (Some(spec), Outputs::Derived(classes))
        }
        None if classifier => {
            let spec = specs.next().expect("the label output was asked for");
            if !spec.shape.is_empty() || !matches!(spec.dtype, DType::I64 | DType::String) {
                return Err(invalid(
                    "label",
                    format!(
                        "a classifier's label output must hold one integer or string per row, not {} of per-row shape {:?}",
                        spec.dtype, spec.shape
                    ),
                ));
            }
            (Some(spec), Outputs::FromModel)
        }
        None => (None, Outputs::Plain),
    };
    Ok(Loaded {
        plan,
        single_row,
        signature: Signature {
            inputs,
            output,
            labels,
        },
        outputs,
        fixed_batch,
    })
}

/// Files whose weights are larger than this get no second, single-row plan.
const SINGLE_ROW_PLAN_MAX_BYTES: usize = 16 << 20;

/// Bytes of the graph's initializers (its weights), roughly.
fn weights_bytes(proto: &pb::ModelProto) -> usize {
    proto.graph.as_ref().map_or(0, |g| {
        g.initializer
            .iter()
            .map(|t| {
                t.raw_data.len()
                    + 4 * t.float_data.len()
                    + 8 * (t.double_data.len() + t.int64_data.len())
                    + 4 * t.int32_data.len()
            })
            .sum()
    })
}

/// The same model with every input's batch dimension fixed to 1, optimised; `None` if tract
/// cannot build it (the symbolic plan then serves single rows too).
fn single_row_plan(proto: &pb::ModelProto) -> Option<std::sync::Arc<TypedRunnableModel>> {
    let mut proto = proto.clone();
    let graph = proto.graph.as_mut()?;
    let initialized: std::collections::HashSet<String> =
        graph.initializer.iter().map(|t| t.name.clone()).collect();
    for input in graph
        .input
        .iter_mut()
        .filter(|i| !initialized.contains(&i.name))
    {
        if let Some(type_proto::Value::TensorType(t)) =
            input.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if let Some(d) = t.shape.as_mut().and_then(|s| s.dim.first_mut()) {
                d.value = Some(dimension::Value::DimValue(1));
            }
        }
    }
    super::ml::framework()
        .model_for_proto_model(&proto)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .ok()
}

/// Refuses an operator tract does not implement, naming it, before tract would fail later
/// with a less direct message.
fn check_operators(
    graph: &pb::GraphProto,
    known: &tract_onnx::model::OnnxOpRegister,
) -> Result<(), ModelError> {
    for node in &graph.node {
        if !known.0.contains_key(&node.op_type) {
            return Err(ModelError::UnsupportedOperator {
                op: node.op_type.clone(),
                domain: node.domain.clone(),
                node: node.name.clone(),
            });
        }
        for attr in &node.attribute {
            for g in attr.g.iter().chain(&attr.graphs) {
                check_operators(g, known)?;
            }
        }
    }
    Ok(())
}

/// The model's real inputs (graph inputs that are not initializers) as specs, with the batch
/// dimension made the symbol `N` in the proto unless the file fixes it.
fn inputs(graph: &mut pb::GraphProto) -> Result<(Vec<TensorSpec>, Option<usize>), ModelError> {
    let initialized: std::collections::HashSet<String> =
        graph.initializer.iter().map(|t| t.name.clone()).collect();
    let mut specs = Vec::new();
    let mut fixed_batch = None;
    let count = graph
        .input
        .iter()
        .filter(|i| !initialized.contains(&i.name))
        .count();
    for (index, input) in graph
        .input
        .iter_mut()
        .filter(|i| !initialized.contains(&i.name))
        .enumerate()
    {
        if input.name.is_empty() && count > 1 {
            return Err(invalid(
                format!("inputs[{index}]"),
                format!("the model has {count} inputs and this one has no name; requests name each input, so every input needs a name"),
            ));
        }
        let field = format!("input {:?}", input.name);
        let Some(type_proto::Value::TensorType(tensor)) =
            input.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            return Err(invalid(
                field,
                "is not a tensor; flotilla feeds tensors only",
            ));
        };
        let dtype = match DataType::try_from(tensor.elem_type) {
            Ok(DataType::Float) => DType::F32,
            Ok(DataType::Double) => DType::F64,
            Ok(DataType::Int64) => DType::I64,
            other => {
                let name = other.map_or("unknown".into(), |t| format!("{t:?}").to_lowercase());
                return Err(invalid(
                    field,
                    format!("has dtype {name}; flotilla feeds float32, float64 and int64 inputs"),
                ));
            }
        };
        let dims = tensor
            .shape
            .as_mut()
            .map(|s| &mut s.dim)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                invalid(
                    field.clone(),
                    "has no shape; flotilla needs at least the batch dimension",
                )
            })?;
        match &dims[0].value {
            Some(dimension::Value::DimValue(b)) if *b > 0 => {
                let b = *b as usize;
                if fixed_batch.is_some_and(|f| f != b) {
                    return Err(invalid(
                        field,
                        "fixes a batch size that differs from another input's",
                    ));
                }
                fixed_batch = Some(b);
            }
            _ => dims[0].value = Some(dimension::Value::DimParam(BATCH.into())),
        }
        let mut shape = Vec::new();
        for (axis, dim) in dims.iter().enumerate().skip(1) {
            match &dim.value {
                Some(dimension::Value::DimValue(v)) if *v >= 0 => shape.push(*v as usize),
                other => {
                    let what = match other {
                        Some(dimension::Value::DimParam(p)) => format!("the symbol {p:?}"),
                        _ => "not given".into(),
                    };
                    return Err(invalid(
                        field,
                        format!("dimension {axis} is {what}; flotilla needs every dimension but the first (the batch) fixed"),
                    ));
                }
            }
        }
        specs.push(TensorSpec::new(input.name.clone(), shape, dtype));
    }
    if specs.is_empty() {
        return Err(invalid("inputs", "the model has no inputs to feed"));
    }
    Ok((specs, fixed_batch))
}

/// The spec of the plan's output `index` from the typed model: batch first, then fixed dims.
fn output_spec(
    model: &TypedModel,
    index: usize,
    name: &str,
    fixed_batch: Option<usize>,
) -> Result<TensorSpec, ModelError> {
    let field = format!("output {name:?}");
    let fact = model
        .output_fact(index)
        .map_err(|e| invalid(field.clone(), format!("{e:#}")))?;
    let dtype = match fact.datum_type {
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::I64 | DatumType::I32 => DType::I64,
        DatumType::String => DType::String,
        other => {
            return Err(invalid(
                field,
                format!(
                "has dtype {other:?}; flotilla serves float32, float64, int64 and string outputs"
            ),
            ))
        }
    };
    let dims: Vec<&TDim> = fact.shape.iter().collect();
    let batch_ok = match (dims.first(), fixed_batch) {
        (Some(d), Some(b)) => d.to_usize().ok() == Some(b),
        (Some(d), None) => d.to_usize().is_err(),
        (None, _) => false,
    };
    if !batch_ok {
        return Err(invalid(
            field,
            format!(
                "has shape {:?}, whose first dimension is not the batch; flotilla serves outputs with one row per input row",
                fact.shape
            ),
        ));
    }
    let shape = dims[1..]
        .iter()
        .map(|d| d.to_usize())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            invalid(
                field.clone(),
                format!(
                    "has shape {:?}; every dimension but the batch must be fixed",
                    fact.shape
                ),
            )
        })?;
    Ok(TensorSpec::new(name, shape, dtype))
}

/// The class labels behind a classifier's `output`, read from the attributes of the node
/// that produces it (through Identity, Cast and CategoryMapper nodes).
fn class_labels(graph: &pb::GraphProto, output: &str) -> Option<Vec<Label>> {
    let node = graph
        .node
        .iter()
        .find(|n| n.output.first().is_some_and(|o| o == output))?;
    let attr = |name: &str| node.attribute.iter().find(|a| a.name == name);
    match node.op_type.as_str() {
        "Identity" | "Cast" => class_labels(graph, node.input.first()?),
        "CategoryMapper" => {
            let upstream = class_labels(graph, node.input.first()?)?;
            let ints = &attr("cats_int64s")?.ints;
            let strings = &attr("cats_strings")?.strings;
            let default = attr("default_string")
                .map(|a| String::from_utf8_lossy(&a.s).into_owned())
                .unwrap_or_else(|| "_Unused".into());
            upstream
                .into_iter()
                .map(|label| match label {
                    Label::Index(i) => Some(Label::Name(
                        ints.iter()
                            .position(|&c| c == i)
                            .and_then(|p| strings.get(p))
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .unwrap_or_else(|| default.clone()),
                    )),
                    Label::Name(_) => None,
                })
                .collect()
        }
        _ => {
            // TreeEnsembleClassifier says int64s, LinearClassifier and SVMClassifier ints.
            let ints = attr("classlabels_int64s").or_else(|| attr("classlabels_ints"));
            if let Some(ints) = ints.filter(|a| !a.ints.is_empty()) {
                Some(ints.ints.iter().map(|&i| Label::Index(i)).collect())
            } else {
                let strings = attr("classlabels_strings").filter(|a| !a.strings.is_empty())?;
                Some(
                    strings
                        .strings
                        .iter()
                        .map(|s| Label::Name(String::from_utf8_lossy(s).into_owned()))
                        .collect(),
                )
            }
        }
    }
}

/// Rewrites `classlabels_strings` attributes as `classlabels_int64s` 0..k, for classifiers
/// whose labels flotilla derives itself.
fn integer_class_labels(graph: &mut pb::GraphProto) {
    const INTS: i32 = pb::attribute_proto::AttributeType::Ints as i32;
    for node in &mut graph.node {
        let ints = if node.op_type.starts_with("TreeEnsemble") {
            "classlabels_int64s"
        } else {
            "classlabels_ints"
        };
        for attr in &mut node.attribute {
            if attr.name == "classlabels_strings" && !attr.strings.is_empty() {
                attr.ints = (0..attr.strings.len() as i64).collect();
                attr.strings.clear();
                attr.name = ints.into();
                attr.r#type = INTS;
            }
        }
    }
}

/// tract's refusal, with its causes.
fn tract_error(e: &tract_onnx::prelude::TractError) -> ModelError {
    ModelError::Onnx(format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An example's protobuf, to be broken in one way by each test.
    fn proto(name: &str) -> pb::ModelProto {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../models/onnx/{name}.onnx"));
        let bytes = std::fs::read(path).unwrap();
        super::super::ml::framework()
            .proto_model_for_read(&mut &bytes[..])
            .unwrap()
    }

    fn refusal(proto: pb::ModelProto) -> String {
        match load_proto(proto) {
            Ok(_) => panic!("must be refused"),
            Err(e) => e.to_string(),
        }
    }

    fn input_type(proto: &mut pb::ModelProto, i: usize) -> &mut type_proto::Tensor {
        let input = &mut proto.graph.as_mut().unwrap().input[i];
        match input.r#type.as_mut().unwrap().value.as_mut().unwrap() {
            type_proto::Value::TensorType(t) => t,
        }
    }

    #[test]
    fn several_inputs_need_names() {
        let mut p = proto("two_inputs");
        p.graph.as_mut().unwrap().input[1].name = String::new();
        let msg = refusal(p);
        assert!(
            msg.contains("inputs[1]") && msg.contains("has 2 inputs and this one has no name"),
            "{msg}"
        );
    }

    #[test]
    fn inputs_of_other_dtypes_are_refused_naming_the_dtype() {
        let mut p = proto("mlp");
        input_type(&mut p, 0).elem_type = DataType::Uint8 as i32;
        let msg = refusal(p);
        assert!(
            msg.contains("input \"x\"")
                && msg.contains("has dtype uint8; flotilla feeds float32, float64 and int64"),
            "{msg}"
        );
    }

    #[test]
    fn per_row_dimensions_must_be_fixed() {
        let mut p = proto("mlp");
        let dims = &mut input_type(&mut p, 0).shape.as_mut().unwrap().dim;
        dims[1].value = Some(dimension::Value::DimParam("features".into()));
        let msg = refusal(p);
        assert!(
            msg.contains("dimension 1 is the symbol \"features\""),
            "{msg}"
        );
    }

    /// skl2onnx leaves the batch dimension blank; tract refuses that unless it is set.
    #[test]
    fn a_blank_batch_dimension_becomes_the_symbol_n() {
        let mut p = proto("mlp");
        input_type(&mut p, 0).shape.as_mut().unwrap().dim[0].value = None;
        let loaded = load_proto(p).unwrap();
        assert_eq!(loaded.signature.inputs[0].shape, [64]);
        assert_eq!(loaded.fixed_batch, None);
    }

    /// A file that fixes its batch size runs in chunks of exactly that many rows.
    #[test]
    fn a_fixed_batch_dimension_is_kept() {
        let mut p = proto("mlp");
        input_type(&mut p, 0).shape.as_mut().unwrap().dim[0].value =
            Some(dimension::Value::DimValue(4));
        let loaded = load_proto(p).unwrap();
        assert_eq!(loaded.fixed_batch, Some(4));
        let onnx = crate::Onnx::from_loaded(loaded);
        let rows = 10;
        let x: Vec<f32> = (0..rows * 64).map(|i| (i % 7) as f32 / 7.0).collect();
        let input = crate::Tensor::new(rows, vec![64], crate::Data::F32(x.clone()));
        let fixed = crate::Backend::compute(&onnx, vec![input.clone()]).unwrap();
        let symbolic = crate::Onnx::from_loaded(load_proto(proto("mlp")).unwrap());
        let whole = crate::Backend::compute(&symbolic, vec![input]).unwrap();
        assert_eq!(fixed.outputs.rows, rows);
        let (crate::Data::F32(a), crate::Data::F32(b)) = (&fixed.outputs.data, &whole.outputs.data)
        else {
            panic!("f32 outputs")
        };
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5));
    }
}
