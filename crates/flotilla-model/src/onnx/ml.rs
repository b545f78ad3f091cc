//! The tract framework flotilla loads ONNX files with, and the one `ai.onnx.ml` operator it
//! adds: TreeEnsembleRegressor (scikit-learn's gradient boosting and forest regressors).
//!
//! tract-onnx 0.23.9, the newest release, implements TreeEnsembleClassifier but not the
//! regressor. Both operators share one tree format, and a regressor is a classifier's score
//! before any label is picked, so a regressor node is rewritten, in the protobuf, into
//! tract's TreeEnsembleClassifier (targets as classes) whose scores become the output. For
//! one target tract lays scores out as `[1 - s, s]` (its two-class layout), so a Slice keeps
//! the second column.

use tract_onnx::pb::{self, attribute_proto::AttributeType, tensor_proto::DataType};

use crate::ModelError;

/// tract-onnx with every operator it implements; TreeEnsembleRegressor is handled by
/// [`rewrite_tree_regressors`] before tract reads the graph.
pub(crate) fn framework() -> tract_onnx::Onnx {
    tract_onnx::onnx().with_ignore_output_shapes(true)
}

/// Rewrites every TreeEnsembleRegressor of `graph` as a TreeEnsembleClassifier over its
/// targets, plus a Slice for single-target ensembles.
pub(crate) fn rewrite_tree_regressors(graph: &mut pb::GraphProto) -> Result<(), ModelError> {
    let mut extra_nodes = Vec::new();
    for (index, node) in graph.node.iter_mut().enumerate() {
        if node.op_type != "TreeEnsembleRegressor" {
            continue;
        }
        let unsupported = |why: String| ModelError::UnsupportedOperator {
            op: format!("TreeEnsembleRegressor ({why})"),
            domain: node.domain.clone(),
            node: node.name.clone(),
        };
        let get = |name: &str| node.attribute.iter().find(|a| a.name == name);
        let targets = get("n_targets").map_or(1, |a| a.i);
        if targets < 1 {
            return Err(unsupported(format!("n_targets is {targets}")));
        }
        let aggregate = get("aggregate_function")
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_else(|| "SUM".into());
        let trees = get("nodes_treeids").map_or(0, |a| {
            let mut ids = a.ints.clone();
            ids.sort_unstable();
            ids.dedup();
            ids.len()
        });
        let scale = match aggregate.as_str() {
            "SUM" => 1.0,
            "AVERAGE" if trees > 0 => 1.0 / trees as f32,
            other => return Err(unsupported(format!("aggregate_function {other}"))),
        };
        let output = node.output.first().cloned().unwrap_or_default();
        let mut attributes = Vec::new();
        for mut attr in std::mem::take(&mut node.attribute) {
            let renamed = match attr.name.as_str() {
                "target_ids" => "class_ids",
                "target_nodeids" => "class_nodeids",
                "target_treeids" => "class_treeids",
                "target_weights" => {
                    attr.floats.iter_mut().for_each(|w| *w *= scale);
                    "class_weights"
                }
                "n_targets" | "aggregate_function" => continue,
                other => other,
            };
            attr.name = renamed.into();
            attributes.push(attr);
        }
        attributes.push(pb::AttributeProto {
            name: "classlabels_int64s".into(),
            r#type: AttributeType::Ints as i32,
            ints: (0..targets).collect(),
            ..Default::default()
        });
        node.attribute = attributes;
        node.op_type = "TreeEnsembleClassifier".into();
        let scores = if targets == 1 {
            format!("{output}__flotilla_scores")
        } else {
            output.clone()
        };
        node.output = vec![format!("{output}__flotilla_label"), scores.clone()];
        if targets == 1 {
            let constant = |suffix: &str, value: i64| pb::TensorProto {
                name: format!("{output}__flotilla_{suffix}"),
                dims: vec![1],
                data_type: DataType::Int64 as i32,
                int64_data: vec![value],
                ..Default::default()
            };
            let (start, end, axis) = (
                constant("start", 1),
                constant("end", 2),
                constant("axis", 1),
            );
            extra_nodes.push((
                index + 1,
                pb::NodeProto {
                    name: format!("{}__flotilla_slice", node.name),
                    op_type: "Slice".into(),
                    input: vec![
                        scores,
                        start.name.clone(),
                        end.name.clone(),
                        axis.name.clone(),
                    ],
                    output: vec![output],
                    ..Default::default()
                },
                [start, end, axis],
            ));
        }
    }
    // Each Slice right after its ensemble, keeping the graph in topological order.
    for (index, node, constants) in extra_nodes.into_iter().rev() {
        graph.initializer.extend(constants);
        graph.node.insert(index, node);
    }
    Ok(())
}
