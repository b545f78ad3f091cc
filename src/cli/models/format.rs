//! How versions and their details are shown: states, tables, short hashes, sizes, times.

use std::collections::BTreeMap;

use flotilla_registry::{Canary, Manifest};

use super::*;

/// What `rollback` without `--to` would make current.
pub(super) fn rollback_target(m: &Manifest) -> Option<u64> {
    m.clone().rollback(None).ok()
}

/// What a version is to its model right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum VersionState {
    Current,
    Canary,
    /// The version `rollback` without `--to` would make current.
    Previous,
}

pub(super) fn state(m: &Manifest, rollback_to: Option<u64>, version: u64) -> Option<VersionState> {
    if m.current == Some(version) {
        Some(VersionState::Current)
    } else if m.canary.is_some_and(|c| c.version == version) {
        Some(VersionState::Canary)
    } else if rollback_to == Some(version) {
        Some(VersionState::Previous)
    } else {
        None
    }
}

pub(super) fn state_text(state: Option<VersionState>, canary: Option<Canary>) -> String {
    match (state, canary) {
        (Some(VersionState::Canary), Some(c)) => format!("canary {}", percent(c.weight)),
        (Some(VersionState::Canary), None) => "canary".into(),
        (Some(VersionState::Current), _) => "current".into(),
        (Some(VersionState::Previous), _) => "previous".into(),
        (None, _) => String::new(),
    }
}

pub(super) fn percent(weight: f64) -> String {
    let p = weight * 100.0;
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p}%")
    }
}

pub(super) fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub(super) fn canary_text(c: Option<Canary>) -> String {
    c.map_or("-".into(), |c| format!("{}@{}", c.version, c.weight))
}

pub(super) fn join(versions: &[u64]) -> String {
    versions
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first 12 hex digits: enough to tell hashes and keys apart at a glance.
pub(super) fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

pub(super) fn metrics_text(metrics: &BTreeMap<String, f64>) -> String {
    if metrics.is_empty() {
        return "-".into();
    }
    metrics
        .iter()
        .map(|(k, v)| format!("{k}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn size_text(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

/// An RFC 3339 UTC time without its fraction of a second.
pub(super) fn short_time(rfc3339: &str) -> String {
    match (rfc3339.find('.'), rfc3339.strip_suffix('Z')) {
        (Some(dot), Some(_)) => format!("{}Z", &rfc3339[..dot]),
        _ => rfc3339.to_owned(),
    }
}

/// A text table: columns padded to their widest cell, two spaces apart.
pub(super) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new<const N: usize>(header: [&str; N]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub(super) fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                line.push_str(&format!("{cell:<width$}  "));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// "current 3 -> 2", "canary none -> 4@0.1": one phrase per field that moved.
pub(super) fn state_changes(
    before: (Option<u64>, Option<Canary>),
    after: (Option<u64>, Option<Canary>),
) -> Vec<String> {
    let mut parts = Vec::new();
    if before.0 != after.0 {
        let text = |v: Option<u64>| v.map_or("none".into(), |v| v.to_string());
        parts.push(format!("current {} -> {}", text(before.0), text(after.0)));
    }
    if before.1 != after.1 {
        let text = |c: Option<Canary>| c.map_or("none".into(), |c| canary_text(Some(c)));
        parts.push(format!("canary {} -> {}", text(before.1), text(after.1)));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::models::inspect::describe_revision;
    use flotilla_registry::VersionInfo;

    fn info() -> VersionInfo {
        VersionInfo {
            kind: "dense".into(),
            object: "iris/x".into(),
            sha256: "ab".repeat(32),
            size: 10,
            signature: None,
            signer: None,
            metrics: BTreeMap::new(),
            created: "2026-01-02T03:04:05.123456789Z".into(),
        }
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut t = Table::new(["A", "LONGER"]);
        t.row(["wide cell".into(), "x".into()]);
        assert_eq!(t.to_string(), "A          LONGER\nwide cell  x\n");
    }

    #[test]
    fn revisions_describe_what_moved() {
        let mut a = Manifest::new("iris");
        a.add_version(info(), Promote::Always);
        assert_eq!(
            describe_revision(None, &a),
            "published 1, current none -> 1"
        );
        let mut b = a.clone();
        b.add_version(info(), Promote::Never);
        b.set_canary(2, 0.1).unwrap();
        assert_eq!(
            describe_revision(Some(&a), &b),
            "published 2, canary none -> 2@0.1"
        );
        let mut c = b.clone();
        c.promote(2).unwrap();
        assert_eq!(
            describe_revision(Some(&b), &c),
            "current 1 -> 2, canary 2@0.1 -> none"
        );
        assert_eq!(describe_revision(Some(&c), &c), "no change");
    }

    #[test]
    fn states_mark_current_canary_and_the_rollback_target() {
        let mut m = Manifest::new("iris");
        for _ in 0..3 {
            m.add_version(info(), Promote::Always);
        }
        m.add_version(info(), Promote::Never);
        m.set_canary(4, 0.25).unwrap();
        let back = rollback_target(&m);
        assert_eq!(back, Some(2));
        let states: Vec<_> = (1..=4).map(|v| state(&m, back, v)).collect();
        assert_eq!(
            states,
            [
                None,
                Some(VersionState::Previous),
                Some(VersionState::Current),
                Some(VersionState::Canary)
            ]
        );
        assert_eq!(
            state_text(Some(VersionState::Canary), m.canary),
            "canary 25%"
        );
    }

    #[test]
    fn small_formatters() {
        assert_eq!(
            short_time("2026-01-02T03:04:05.123Z"),
            "2026-01-02T03:04:05Z"
        );
        assert_eq!(short_time("2026-01-02T03:04:05Z"), "2026-01-02T03:04:05Z");
        assert_eq!(size_text(512), "512 B");
        assert_eq!(size_text(1536), "1.5 KiB");
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(percent(0.125), "12.5%");
    }
}
