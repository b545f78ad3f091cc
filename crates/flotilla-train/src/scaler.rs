//! Preprocessing: feature standardisation, `(x - mean) / std` per column, fitted on the training
//! split only so nothing about the validation rows leaks into training. The fitted values
//! become the artifact's `scaler`, and the served model applies them with the same arithmetic,
//! so a trained network sees exactly the inputs it will see in production.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::TrainError;
use flotilla_model::Scaler;

/// Per-feature mean and population standard deviation (as scikit-learn's `StandardScaler`).
#[derive(Debug, Clone, PartialEq)]
pub struct Standardiser {
    pub mean: Array1<f64>,
    pub std: Array1<f64>,
}

impl Standardiser {
    /// Fits on `x` (the training rows). A column whose values are all equal cannot be scaled
    /// and carries no information; it is refused by name rather than silently dropped, so the
    /// artifact's inputs stay the file's columns.
    pub fn fit(x: ArrayView2<f64>, features: &[String]) -> Result<Standardiser, TrainError> {
        let mean = x
            .mean_axis(Axis(0))
            .expect("the training split is not empty");
        let std = x.std_axis(Axis(0), 0.0);
        for (j, (&s, &m)) in std.iter().zip(&mean).enumerate() {
            // Rounding can leave a constant column with a std of a few ulps instead of 0.
            if s <= f64::EPSILON * m.abs().max(1.0) {
                return Err(TrainError::ConstantFeature {
                    column: features[j].clone(),
                });
            }
        }
        Ok(Standardiser { mean, std })
    }

    pub fn transform(&self, x: ArrayView2<f64>) -> Array2<f64> {
        (&x - &self.mean) / &self.std
    }

    pub fn to_scaler(&self) -> Scaler {
        Scaler {
            mean: self.mean.to_vec(),
            std: self.std.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn standardises_and_refuses_a_constant_column_by_name() {
        let x = array![[1.0, 0.1, 5.0], [3.0, 0.1, 7.0]];
        let names = ["a".to_owned(), "flat".to_owned(), "c".to_owned()];
        let err = Standardiser::fit(x.view(), &names).unwrap_err().to_string();
        assert!(err.contains("`flat`"), "{err}");

        let x = array![[1.0, 5.0], [3.0, 7.0]];
        let s = Standardiser::fit(x.view(), &names[..2]).unwrap();
        assert_eq!(s.transform(x.view()), array![[-1.0, -1.0], [1.0, 1.0]]);
    }
}
