//! Validation metrics, computed from a model's outputs: mse, rmse, mae and r2 for regression;
//! accuracy, log_loss and macro_f1 for classifiers. [`super::fit`] feeds them the outputs of the
//! artifact itself, through [`flotilla_model::Model::forward`], so the numbers describe exactly what
//! will be served. The definitions follow scikit-learn's so the two can be compared.

use std::collections::BTreeMap;

use ndarray::{ArrayView1, ArrayView2};

/// Probabilities are clipped to `[EPS, 1 - EPS]` before a logarithm, so one confident mistake
/// gives a large but finite log loss.
const LOG_LOSS_EPS: f64 = 1e-15;

/// mse, rmse, mae and r2 of `predicted` against `truth`.
pub fn regression(truth: &[f64], predicted: ArrayView1<f64>) -> BTreeMap<String, f64> {
    assert_eq!(truth.len(), predicted.len());
    let n = truth.len() as f64;
    let errors = truth.iter().zip(predicted).map(|(t, p)| p - t);
    let mse = errors.clone().map(|e| e * e).sum::<f64>() / n;
    let mae = errors.map(f64::abs).sum::<f64>() / n;
    BTreeMap::from([
        ("mse".to_owned(), mse),
        ("rmse".to_owned(), mse.sqrt()),
        ("mae".to_owned(), mae),
        ("r2".to_owned(), r2(truth, predicted)),
    ])
}

/// The coefficient of determination, `1 - SS_res / SS_tot`. A constant `truth` scores 1 when
/// predicted exactly and 0 otherwise, as in scikit-learn.
pub fn r2(truth: &[f64], predicted: ArrayView1<f64>) -> f64 {
    let mean = truth.iter().sum::<f64>() / truth.len() as f64;
    let ss_res: f64 = truth
        .iter()
        .zip(predicted)
        .map(|(t, p)| (t - p) * (t - p))
        .sum();
    let ss_tot: f64 = truth.iter().map(|t| (t - mean) * (t - mean)).sum();
    if ss_tot == 0.0 {
        return if ss_res == 0.0 { 1.0 } else { 0.0 };
    }
    1.0 - ss_res / ss_tot
}

/// The class a row of outputs predicts, by the same rule the worker uses to pick a label: a
/// single sigmoid output means class 1 when it is at least 0.5, otherwise the first largest.
pub fn predicted_class(output: ArrayView1<f64>) -> usize {
    if output.len() == 1 {
        return usize::from(output[0] >= 0.5);
    }
    let mut best = 0;
    for (i, &p) in output.iter().enumerate() {
        if p > output[best] {
            best = i;
        }
    }
    best
}

/// The share of rows whose predicted class is the true one.
pub fn accuracy(truth: &[usize], outputs: ArrayView2<f64>) -> f64 {
    let right = truth
        .iter()
        .zip(outputs.rows())
        .filter(|&(&t, row)| predicted_class(row) == t)
        .count();
    right as f64 / truth.len() as f64
}

/// accuracy, log_loss and macro_f1 of class probabilities (one sigmoid column, or one column
/// per class) against true class indices.
pub fn classification(truth: &[usize], outputs: ArrayView2<f64>) -> BTreeMap<String, f64> {
    assert_eq!(truth.len(), outputs.nrows());
    let n = truth.len() as f64;
    let log_loss = truth
        .iter()
        .zip(outputs.rows())
        .map(|(&t, row)| {
            let p = if row.len() == 1 {
                if t == 1 {
                    row[0]
                } else {
                    1.0 - row[0]
                }
            } else {
                row[t]
            };
            -p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS).ln()
        })
        .sum::<f64>()
        / n;
    let predicted: Vec<usize> = outputs.rows().into_iter().map(predicted_class).collect();
    BTreeMap::from([
        ("accuracy".to_owned(), accuracy(truth, outputs)),
        ("log_loss".to_owned(), log_loss),
        ("macro_f1".to_owned(), macro_f1(truth, &predicted)),
    ])
}

/// The unweighted mean over classes of `F1 = 2 TP / (2 TP + FP + FN)`, over the classes that
/// occur in `truth` or `predicted` (scikit-learn's `f1_score(average="macro")`).
pub fn macro_f1(truth: &[usize], predicted: &[usize]) -> f64 {
    let classes = truth.iter().chain(predicted).max().map_or(0, |&m| m + 1);
    let mut tp = vec![0usize; classes];
    let mut fp = vec![0usize; classes];
    let mut fneg = vec![0usize; classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        if t == p {
            tp[t] += 1;
        } else {
            fp[p] += 1;
            fneg[t] += 1;
        }
    }
    let scores: Vec<f64> = (0..classes)
        .filter(|&c| tp[c] + fp[c] + fneg[c] > 0)
        .map(|c| 2.0 * tp[c] as f64 / (2 * tp[c] + fp[c] + fneg[c]) as f64)
        .collect();
    scores.iter().sum::<f64>() / scores.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn regression_metrics_match_hand_computed_values() {
        let m = regression(&[3.0, -0.5, 2.0, 7.0], array![2.5, 0.0, 2.0, 8.0].view());
        assert!((m["mse"] - 0.375).abs() < 1e-12);
        assert!((m["rmse"] - 0.375f64.sqrt()).abs() < 1e-12);
        assert!((m["mae"] - 0.5).abs() < 1e-12);
        // scikit-learn's r2_score docstring example.
        assert!((m["r2"] - 0.948_608_137_044_967_8).abs() < 1e-12);
    }

    #[test]
    fn classification_metrics_match_scikit_learn() {
        // f1_score([0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 1], average="macro") == 0.26666...
        assert!(
            (macro_f1(&[0, 1, 2, 0, 1, 2], &[0, 2, 1, 0, 0, 1]) - 0.266_666_666_666_666_6).abs()
                < 1e-12
        );
        // log_loss(["spam", "ham", "ham", "spam"], [[.1, .9], [.9, .1], [.8, .2], [.35, .65]])
        let probs = array![[0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.35, 0.65]];
        let m = classification(&[1, 0, 0, 1], probs.view());
        assert!((m["log_loss"] - 0.216_161_874_680_579_12).abs() < 1e-12);
        assert_eq!(m["accuracy"], 1.0);
        // The same problem as one sigmoid column, P(class 1).
        let sigmoid = array![[0.9], [0.1], [0.2], [0.65]];
        assert_eq!(classification(&[1, 0, 0, 1], sigmoid.view()), m);
        assert_eq!(predicted_class(array![0.5].view()), 1);
        assert_eq!(predicted_class(array![0.2, 0.4, 0.4].view()), 1);
    }
}
