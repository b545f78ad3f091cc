//! How `flotilla models` prints: version states, percentages, short hashes and times, and
//! aligned tables without trailing spaces.

use std::collections::BTreeMap;

use flotilla_registry::{Canary, Manifest};

// ---- formatting ----------------------------------------------------------------------

/// What `rollback` without `--to` would make current.
pub(super) fn rollback_target(m: &Manifest) -> Option<u64> {
    m.clone().rollback(None).ok()
}

pub(super) fn state(m: &Manifest, rollback_to: Option<u64>, version: u64) -> Option<&'static str> {
    if m.current == Some(version) {
        Some("current")
    } else if m.canary.is_some_and(|c| c.version == version) {
        Some("canary")
    } else if rollback_to == Some(version) {
        Some("previous")
    } else {
        None
    }
}

pub(super) fn state_text(state: Option<&str>, canary: Option<Canary>) -> String {
    match (state, canary) {
        (Some("canary"), Some(c)) => format!("canary {}", percent(c.weight)),
        (Some(s), _) => s.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::super::inspect::describe_revision;
    use super::*;
    use flotilla_model::Kind;
    use flotilla_registry::Promote;
    use flotilla_registry::VersionInfo;

    fn info() -> VersionInfo {
        VersionInfo {
            kind: Kind::Dense,
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
            [None, Some("previous"), Some("current"), Some("canary")]
        );
        assert_eq!(state_text(Some("canary"), m.canary), "canary 25%");
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
