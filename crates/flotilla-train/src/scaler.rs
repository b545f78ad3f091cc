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
    /// Fits on `x` (the training rows). A column whose values are all equal on the training
    /// split keeps scale 1, as scikit-learn's `StandardScaler` does (real data has them: the
    /// 8x8 digits have constant pixels, and on a small split any rare feature can be), so the
    /// artifact's inputs stay the file's columns; each is named in a warning. Scaled values
    /// that are not finite (a cell of 1e308 overflows the variance) are refused now, naming
    /// the column, rather than after every epoch has run.
    pub fn fit(x: ArrayView2<f64>, features: &[String]) -> Result<Standardiser, TrainError> {
        let mean = x
            .mean_axis(Axis(0))
            .expect("the training split is not empty");
        let mut std = x.std_axis(Axis(0), 0.0);
        for (j, (s, &m)) in std.iter_mut().zip(&mean).enumerate() {
            if !(s.is_finite() && m.is_finite()) {
                return Err(TrainError::NotFiniteFeature {
                    column: features[j].clone(),
                });
            }
            // Rounding can leave a constant column with a std of a few ulps instead of 0.
            if *s <= f64::EPSILON * m.abs().max(1.0) {
                tracing::warn!(
                    column = %features[j],
                    "feature is constant on the training split; kept with scale 1 (it carries no information)"
                );
                *s = 1.0;
            }
        }
        let scaler = Standardiser { mean, std };
        let scaled = scaler.transform(x);
        if let Some(j) = scaled
            .axis_iter(Axis(1))
            .position(|col| col.iter().any(|v| !v.is_finite()))
        {
            return Err(TrainError::NotFiniteFeature {
                column: features[j].clone(),
            });
        }
        Ok(scaler)
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
    fn standardises_and_keeps_a_constant_column_with_scale_one() {
        // Issue 8, item 18: a constant column was refused; scikit-learn keeps it (scale 1).
        let x = array![[1.0, 0.1, 5.0], [3.0, 0.1, 7.0]];
        let names = ["a".to_owned(), "flat".to_owned(), "c".to_owned()];
        let s = Standardiser::fit(x.view(), &names).unwrap();
        assert_eq!(s.std[1], 1.0);
        assert_eq!(s.transform(x.view()).column(1).to_vec(), vec![0.0, 0.0]);
        // A cell of 1e308 overflows the variance: refused at once, by column.
        let x = array![[1.0, 1e308], [3.0, -1e308]];
        let err = Standardiser::fit(x.view(), &names[..2])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`flat`"), "{err}");

        let x = array![[1.0, 5.0], [3.0, 7.0]];
        let s = Standardiser::fit(x.view(), &names[..2]).unwrap();
        assert_eq!(s.transform(x.view()), array![[-1.0, -1.0], [1.0, 1.0]]);
    }
}
