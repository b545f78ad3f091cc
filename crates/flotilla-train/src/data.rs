//! Training data: a CSV file with a header row, read into a feature matrix and the raw text of
//! the target column, plus the seeded train/validation split.
//!
//! Every feature cell must be a finite number; the target may be numbers (regression, or class
//! codes) or text (class labels). How the target is read is decided later, by the model kind,
//! through [`Dataset::numeric_target`] and [`Dataset::classes`]. Errors name the file, the line
//! and the column. Standardisation is not done here but in [`super::scaler`], because it must be
//! fitted on the training split only.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use ndarray::Array2;

use super::rng::splitmix64;
use super::TrainError;

/// A loaded CSV file: features as numbers, the target column as written.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where the rows came from (a path, or a name for in-memory data), for error messages.
    pub source: String,
    /// Feature column names, in file order with the target column taken out; the artifact's
    /// inputs are in this order.
    pub features: Vec<String>,
    /// The target column's name.
    pub target: String,
    /// `rows x features`.
    pub x: Array2<f64>,
    /// The target cell of each row, trimmed; read as numbers or labels depending on the model.
    pub y: Vec<String>,
    /// The file line each row is on, so an error about a target value can point at it.
    pub lines: Vec<u64>,
}

/// A classification target: the sorted distinct labels and each row's index into them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classes {
    /// Sorted: numerically when every label is a number (so "10" follows "9"), else as text.
    pub labels: Vec<String>,
    /// One entry per row, an index into `labels`.
    pub index: Vec<usize>,
}

/// Reads a CSV file whose header names the columns; `target` is the column to predict.
pub fn load_csv(path: &Path, target: &str) -> Result<Dataset, TrainError> {
    let file = std::fs::File::open(path).map_err(|source| TrainError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Dataset::from_reader(
        std::io::BufReader::new(file),
        &path.display().to_string(),
        target,
    )
}

impl Dataset {
    /// Reads CSV text from `reader`; `source` names it in errors.
    pub fn from_reader(
        reader: impl Read,
        source: &str,
        target: &str,
    ) -> Result<Dataset, TrainError> {
        let path = || source.to_owned();
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(reader);
        let header: Vec<String> = csv
            .headers()
            .map_err(|e| csv_error(source, e))?
            .iter()
            .map(str::to_owned)
            .collect();
        if header.iter().all(String::is_empty) {
            return Err(TrainError::EmptyFile { path: path() });
        }
        let mut seen = BTreeSet::new();
        if let Some(twice) = header.iter().find(|h| !seen.insert(h.as_str())) {
            return Err(TrainError::DuplicateColumn {
                path: path(),
                column: twice.clone(),
            });
        }
        let target_col =
            header
                .iter()
                .position(|h| h == target)
                .ok_or_else(|| TrainError::MissingTarget {
                    path: path(),
                    target: target.to_owned(),
                    columns: header.clone(),
                })?;
        if header.len() == 1 {
            return Err(TrainError::NoFeatures {
                path: path(),
                target: target.to_owned(),
            });
        }

        let mut values = Vec::new();
        let mut y = Vec::new();
        let mut lines = Vec::new();
        for record in csv.records() {
            let record = record.map_err(|e| csv_error(source, e))?;
            let line = record.position().map_or(0, csv::Position::line);
            if record.len() != header.len() {
                return Err(TrainError::Ragged {
                    path: path(),
                    line,
                    found: record.len(),
                    expected: header.len(),
                });
            }
            for (col, cell) in record.iter().enumerate() {
                if col == target_col {
                    if cell.is_empty() {
                        return Err(TrainError::EmptyTarget {
                            path: path(),
                            line,
                            column: target.to_owned(),
                        });
                    }
                    y.push(cell.to_owned());
                    continue;
                }
                let value = parse_finite(cell).ok_or_else(|| TrainError::NotANumber {
                    path: path(),
                    line,
                    column: header[col].clone(),
                    value: cell.to_owned(),
                })?;
                values.push(value);
            }
            lines.push(line);
        }
        if y.is_empty() {
            return Err(TrainError::NoRows { path: path() });
        }
        let features: Vec<String> = header
            .iter()
            .enumerate()
            .filter(|&(col, _)| col != target_col)
            .map(|(_, name)| name.clone())
            .collect();
        let x = Array2::from_shape_vec((y.len(), features.len()), values)
            .expect("every row was checked to have one value per feature");
        Ok(Dataset {
            source: source.to_owned(),
            features,
            target: target.to_owned(),
            x,
            y,
            lines,
        })
    }

    pub fn rows(&self) -> usize {
        self.y.len()
    }

    /// True when every target cell is a number, i.e. the target could be regressed on.
    pub fn target_is_numeric(&self) -> bool {
        self.y.iter().all(|v| parse_finite(v).is_some())
    }

    /// The target as numbers, for regression; `model` says which model needed them.
    pub fn numeric_target(&self, model: &'static str) -> Result<Vec<f64>, TrainError> {
        self.y
            .iter()
            .zip(&self.lines)
            .map(|(cell, &line)| {
                parse_finite(cell).ok_or_else(|| TrainError::TargetNotNumeric {
                    path: self.source.clone(),
                    line,
                    column: self.target.clone(),
                    value: cell.clone(),
                    model,
                })
            })
            .collect()
    }

    /// The target as class labels. Numeric targets are told apart by value, so `1` and `1.0`
    /// are one class, named by its text where it first occurs.
    pub fn classes(&self) -> Classes {
        if self.target_is_numeric() {
            // `+ 0.0` turns -0 into 0, which `total_cmp` would otherwise tell apart.
            let values: Vec<f64> = self
                .y
                .iter()
                .map(|v| parse_finite(v).expect("checked numeric") + 0.0)
                .collect();
            let mut distinct = values.clone();
            distinct.sort_by(f64::total_cmp);
            distinct.dedup();
            let index: Vec<usize> = values
                .iter()
                .map(|v| {
                    distinct
                        .binary_search_by(|d| d.total_cmp(v))
                        .expect("every value is in the distinct list")
                })
                .collect();
            // Walking backwards leaves each class named by its first occurrence.
            let mut labels = vec![String::new(); distinct.len()];
            for (row, &class) in index.iter().enumerate().rev() {
                labels[class] = self.y[row].clone();
            }
            Classes { labels, index }
        } else {
            let labels: Vec<String> = self
                .y
                .iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .cloned()
                .collect();
            let index = self
                .y
                .iter()
                .map(|v| labels.binary_search(v).expect("every label is in the set"))
                .collect();
            Classes { labels, index }
        }
    }
}

fn parse_finite(cell: &str) -> Option<f64> {
    cell.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn csv_error(path: &str, e: csv::Error) -> TrainError {
    let line = e.position().map_or(0, csv::Position::line);
    let message = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(source) => TrainError::Io {
            path: path.to_owned(),
            source,
        },
        _ => TrainError::Csv {
            path: path.to_owned(),
            line,
            message,
        },
    }
}

/// Row indices of the training and validation splits, each in increasing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
}

/// The seeded split: row `i` (0-based, header excluded) goes to validation iff
/// `splitmix64(seed + i) % 10_000 < floor(validation_fraction * 10_000)`, with wrapping
/// addition. Each row is decided on its own, so the validation share is close to, not exactly,
/// the fraction, and the rule is one line in any language (see `scripts/sklearn_baseline.py`).
pub fn split(rows: usize, validation_fraction: f64, seed: u64) -> Split {
    let threshold = (validation_fraction * 10_000.0) as u64;
    let (validation, train) =
        (0..rows).partition(|&i| splitmix64(seed.wrapping_add(i as u64)) % 10_000 < threshold);
    Split { train, validation }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, target: &str) -> Result<Dataset, TrainError> {
        Dataset::from_reader(text.as_bytes(), "t.csv", target)
    }

    #[test]
    fn the_split_is_the_documented_rule_and_matches_python() {
        // From scripts/sklearn_baseline.py's `is_validation` over rows 0..40.
        let s = split(40, 0.2, 42);
        assert_eq!(s.validation, [12, 14, 16, 19, 20, 31, 33, 39]);
        let s = split(40, 0.5, 7);
        assert_eq!(
            s.validation,
            [
                0, 2, 3, 5, 6, 9, 10, 11, 12, 15, 16, 17, 18, 20, 21, 22, 24, 25, 27, 29, 33, 34,
                38
            ]
        );
        assert_eq!(s.train.len() + s.validation.len(), 40);
        assert_eq!(split(1000, 0.2, 42), split(1000, 0.2, 42));
        assert_ne!(split(1000, 0.2, 42), split(1000, 0.2, 43));
        // A longer file keeps the first rows' assignment: the rule is per row.
        assert_eq!(
            split(1000, 0.2, 42).validation[..8],
            split(40, 0.2, 42).validation
        );
    }

    #[test]
    fn reads_features_and_target() {
        let d = read("a, b ,y\n1,2,cat\n3,4.5,dog\n", "y").unwrap();
        assert_eq!(d.features, ["a", "b"]);
        assert_eq!(d.x, ndarray::array![[1.0, 2.0], [3.0, 4.5]]);
        assert_eq!(d.y, ["cat", "dog"]);
        assert_eq!(d.lines, [2, 3]);
        assert!(!d.target_is_numeric());
        let err = d
            .numeric_target("linear regression")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("\"cat\""), "{err}");
    }

    #[test]
    fn numeric_classes_sort_by_value() {
        let d = read("y,a\n10,1\n9,2\n10.0,3\n0,4\n-0,5\n", "y").unwrap();
        let c = d.classes();
        assert_eq!(c.labels, ["0", "9", "10"]);
        assert_eq!(c.index, [2, 1, 2, 0, 0]);
    }

    #[test]
    fn errors_name_the_file_line_and_column() {
        let cases = [
            ("a,b\n1,2\n", "y", "no column named \"y\""),
            ("a,b\n1,2\n", "y", "a, b"),
            ("", "y", "empty"),
            ("a,y\n", "y", "no data rows"),
            ("a,y\n1,2\n3\n", "y", "line 3"),
            ("a,y\n1,2\nx,3\n", "y", "t.csv: line 3, column `a`: \"x\""),
            ("a,y\n1,2\n,3\n", "y", "line 3, column `a`"),
            ("a,y\nnan,2\n", "y", "line 2, column `a`: \"nan\""),
            ("a,y,a\n1,2,3\n", "y", "`a` appears twice"),
            ("y\n1\n", "y", "no features"),
            ("a,y\n1,\n", "y", "line 2"),
        ];
        for (text, target, expected) in cases {
            let err = read(text, target).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.contains("t.csv"), "{text:?}: {err}");
        }
    }
}
