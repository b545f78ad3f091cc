//! Where a text model's files come from: a sentence-transformers directory on disk, or the
//! one-blob archive of it that the registry stores (the registry stores bytes, one object per
//! version, and a directory has six files).
//!
//! The archive is a plain ustar tar (the `tar` crate) with the files the encoder reads and
//! nothing else, in name order, with zeroed times, owners and modes: the same directory always
//! packs to the same bytes, so its sha256 is a checksum over all of its files and a re-publish
//! of an unchanged directory is recognisable. Reading an archive copies nothing: each file is
//! a slice of the archive's bytes, checked to lie inside them before it is used (a header's
//! declared size is never trusted to allocate).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{invalid, ModelError};

/// Entries an archive may hold: the six files, with room for a future module's config.
const MAX_ENTRIES: usize = 32;

/// A text model's files, by their name inside the directory (`1_Pooling/config.json`).
#[derive(Debug)]
pub enum Files<'a> {
    /// Read from this directory on demand.
    Dir(PathBuf),
    /// Slices of an archive's bytes.
    Archive(BTreeMap<String, &'a [u8]>),
}

impl<'a> Files<'a> {
    pub fn dir(path: &Path) -> Files<'static> {
        Files::Dir(path.to_path_buf())
    }

    /// Indexes an archive made by [`pack`]. Refuses anything but regular files and
    /// directories, names that are not plain relative paths, duplicates, and entries whose
    /// data would lie outside `bytes`.
    pub fn archive(bytes: &'a [u8]) -> Result<Files<'a>, ModelError> {
        let bad = |message: String| invalid("archive", message);
        let mut files = BTreeMap::new();
        let mut archive = tar::Archive::new(bytes);
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        for (i, entry) in entries.enumerate() {
            if i >= MAX_ENTRIES {
                return Err(bad(format!("more than {MAX_ENTRIES} entries")));
            }
            let entry = entry.map_err(|e| bad(format!("entry {i}: {e}")))?;
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            let path = entry
                .path()
                .map_err(|e| bad(format!("entry {i}: its name: {e}")))?;
            let name = plain_name(&path).ok_or_else(|| {
                bad(format!(
                    "entry {i}: {:?} is not a plain relative path",
                    path.display()
                ))
            })?;
            if !kind.is_file() {
                return Err(bad(format!("{name}: only regular files may be stored")));
            }
            let start = usize::try_from(entry.raw_file_position()).unwrap_or(usize::MAX);
            let size = usize::try_from(entry.size()).unwrap_or(usize::MAX);
            let data = start
                .checked_add(size)
                .and_then(|end| bytes.get(start..end))
                .ok_or_else(|| {
                    bad(format!(
                        "{name}: declares {size} bytes but the archive ends first (truncated?)"
                    ))
                })?;
            if files.insert(name.clone(), data).is_some() {
                return Err(bad(format!("{name} is stored twice")));
            }
        }
        Ok(Files::Archive(files))
    }

    /// One file's bytes; an error naming it when it is missing.
    pub fn read(&self, name: &str) -> Result<Cow<'a, [u8]>, ModelError> {
        match self {
            Files::Dir(dir) => {
                let path = dir.join(name);
                std::fs::read(&path)
                    .map(Cow::Owned)
                    .map_err(|source| ModelError::Io {
                        path: path.display().to_string(),
                        source,
                    })
            }
            Files::Archive(files) => files.get(name).map(|b| Cow::Borrowed(*b)).ok_or_else(|| {
                invalid(
                    name,
                    "missing from the archive (a text-embedding version holds a whole sentence-transformers directory)",
                )
            }),
        }
    }
}

/// `path` as a `/`-separated name when it is relative and has no `.`/`..`/root parts.
fn plain_name(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(p) => parts.push(p.to_str()?),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Packs `names` from `dir` into an archive [`Files::archive`] reads: in name order, with
/// zeroed metadata, so equal files give equal bytes.
pub fn pack(dir: &Path, names: &[String]) -> Result<Vec<u8>, ModelError> {
    let mut names = names.to_vec();
    names.sort();
    names.dedup();
    let mut builder = tar::Builder::new(Vec::new());
    for name in &names {
        let bytes = Files::dir(dir).read(name)?;
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, bytes.as_ref())
            .map_err(|e| invalid(name.as_str(), format!("packing it: {e}")))?;
    }
    builder
        .into_inner()
        .map_err(|e| invalid("archive", format!("packing it: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        dir
    }

    #[test]
    fn packs_deterministically_and_reads_back_without_copying() {
        let dir = dir_with(&[("b.json", b"{}"), ("1_Pooling/config.json", b"[1]")]);
        let names = vec!["b.json".to_string(), "1_Pooling/config.json".to_string()];
        let packed = pack(dir.path(), &names).unwrap();
        let reversed: Vec<String> = names.iter().rev().cloned().collect();
        assert_eq!(packed, pack(dir.path(), &reversed).unwrap());
        let files = Files::archive(&packed).unwrap();
        assert_eq!(files.read("b.json").unwrap().as_ref(), b"{}");
        assert!(matches!(
            files.read("1_Pooling/config.json").unwrap(),
            Cow::Borrowed(b"[1]")
        ));
        let missing = files.read("tokenizer.json").unwrap_err().to_string();
        assert!(missing.contains("tokenizer.json"), "{missing}");
    }

    #[test]
    fn a_truncated_or_foreign_archive_is_refused_by_name() {
        let dir = dir_with(&[("model.safetensors", &[7u8; 3000])]);
        let packed = pack(dir.path(), &["model.safetensors".to_string()]).unwrap();
        let err = Files::archive(&packed[..1500]).unwrap_err().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        assert!(Files::archive(b"certainly not a tar archive, just some text").is_err());
    }

    #[test]
    fn links_and_escaping_names_are_refused() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, "config.json", "/etc/passwd")
            .unwrap();
        let linked = builder.into_inner().unwrap();
        let err = Files::archive(&linked).unwrap_err().to_string();
        assert!(err.contains("only regular files"), "{err}");

        let mut raw = tar::Header::new_old();
        raw.as_old_mut().name[..12].copy_from_slice(b"../evil.json");
        raw.set_size(1);
        raw.set_entry_type(tar::EntryType::Regular);
        raw.set_cksum();
        let mut escaping = raw.as_bytes().to_vec();
        escaping.extend_from_slice(&[b'x'; 512]);
        escaping.extend_from_slice(&[0; 1024]);
        let err = Files::archive(&escaping).unwrap_err().to_string();
        assert!(err.contains("plain relative path"), "{err}");
    }
}
