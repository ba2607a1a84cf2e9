//! The file vault: a JSON file of Keeper-shaped records, locked for the whole run and
//! replaced atomically (docs/design.md, I4).
//!
//! Hostile files are refused before anything is sent: a FIFO, device or socket
//! as vault or lock, a lock that is a symlink, a file over the size cap,
//! duplicate JSON keys. A symlinked vault is resolved: the lock and the
//! temporary file sit beside the real file, and the link stays a link.
//!
//! The file is indexed, not loaded as a tree: each record stays raw text until
//! it is read or changed, so memory stays near the file's size. A rewrite is
//! compact, and keeps numbers, key order and unknown content exactly.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::file_lock::lock;
use super::json_index::{Member, Slot, index, is_minified, minify};
use super::keeper_shape::{apply_fields, remove_label, to_record};
use super::record_json::record_from_json;
use super::{Change, Vault, VaultError, VaultOptions};
use crate::record::Record;
use crate::record::StoreField;

/// Records as they were before a change (see `FileVault::undo_point`).
pub struct UndoPoint(Vec<(usize, Slot)>);

/// The owner, group and mode a rewrite must keep.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
    mode: u32,
}

/// An open, locked vault file.
pub struct FileVault {
    /// As given, for messages.
    path: PathBuf,
    /// With symlinks resolved: what is locked and replaced.
    real: PathBuf,
    text: String,
    /// `text` has no whitespace between tokens: a rewrite copies its raw
    /// parts as they are instead of minifying them again (a pass rewrites
    /// the file once per group commit).
    compact: bool,
    members: Vec<(String, Member)>,
    records: Vec<Slot>,
    by_uid: HashMap<String, usize>,
    /// `None` for a vault this run creates.
    owner: Option<Owner>,
    // Held until the vault is dropped; a separate file, since the vault itself is
    // replaced by rename.
    _lock: File,
}

impl std::fmt::Debug for FileVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileVault")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

use crate::fsguard::kind_of;

/// Whoever can write the vault's folder can swap the vault between reads and
/// the rename; say so when that is someone other than its owner or root.
fn warn_if_folder_is_shared(real: &Path, given: &Path) {
    let Some(meta) = real.parent().and_then(|d| fs::metadata(d).ok()) else {
        return;
    };
    let mode = meta.permissions().mode();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let foreign = meta.uid() != 0 && meta.uid() != unsafe { libc::geteuid() };
    if crate::fsguard::others_may_swap(&meta) || foreign {
        tracing::warn!(
            "the folder of vault {} can be changed by other users (owner uid {}, mode {:04o}): \
             they could swap the vault during a run; keep vaults in a folder only you and root can write",
            given.display(),
            meta.uid(),
            mode & 0o7777
        );
    }
}

/// Removes temporary files that a run killed mid-write left beside the vault:
/// they may hold a new secret. Only ours: regular files named as `save` names
/// them. Called under the lock, so no live run is writing one.
fn remove_stale_temporaries(real: &Path) {
    let (Some(dir), Some(name)) = (real.parent(), real.file_name()) else {
        return;
    };
    // Exactly what `save` creates: ".NAME." + tempfile's 6 random characters + ".tmp".
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let ours = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .is_some_and(|random| {
                random.len() == 6 && random.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        if ours && entry.file_type().is_ok_and(|t| t.is_file()) {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a temporary file left by an interrupted run")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), "could not remove a temporary file left by an interrupted run: {e}")
                }
            }
        }
    }
}

/// `path` with symlinks resolved; for a file still to be created, its folder's.
fn resolve(path: &Path, create: bool) -> Result<PathBuf, VaultError> {
    match fs::canonicalize(path) {
        Ok(real) => Ok(real),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling link is not a file to create: that would replace the link.
            let dangling = fs::symlink_metadata(path).is_ok();
            if !create || dangling {
                return Err(VaultError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            let parent = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let dir = fs::canonicalize(parent).map_err(|source| VaultError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(dir.join(path.file_name().unwrap_or_default()))
        }
        Err(source) => Err(VaultError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether this process can give a new file `uid` and `gid`.
fn can_give(uid: u32, gid: u32) -> bool {
    // SAFETY: these calls have no preconditions and cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid == 0 {
        return true;
    }
    if uid != euid {
        return false;
    }
    if gid == egid {
        return true;
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: the buffer holds `groups.len()` entries, as passed.
    let n = unsafe { libc::getgroups(groups.len() as i32, groups.as_mut_ptr()) };
    n > 0 && groups[..n as usize].contains(&gid)
}

/// A folder or a special file where the vault should be is refused before
/// the lock is taken.
fn refuse_non_file(path: &Path, real: &Path) -> Result<(), VaultError> {
    if real.is_dir() {
        return Err(VaultError::IsFolder {
            path: path.to_path_buf(),
        });
    }
    match fs::metadata(real) {
        Ok(meta) if !meta.is_file() => Err(VaultError::NotRegular {
            path: path.to_path_buf(),
            what: kind_of(&meta),
        }),
        _ => Ok(()),
    }
}

/// Opens the vault at `real` without following a link; `None` for a vault
/// still to be created.
fn open_existing(path: &Path, real: &Path, create: bool) -> Result<Option<File>, VaultError> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(crate::fsguard::SAFE_OPEN)
        .open(real)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if create && e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(VaultError::NotFound {
            path: path.to_path_buf(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(VaultError::NotRegular {
            path: path.to_path_buf(),
            what: "a symbolic link swapped in while it was opened",
        }),
        Err(source) => Err(VaultError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads the open vault whole, as text, after checking what it is: a regular
/// file under the size cap, private (or warned about), and owned by someone
/// this user can give a rewritten file.
fn read_checked(
    file: File,
    path: &Path,
    opts: &VaultOptions,
) -> Result<(String, Owner), VaultError> {
    let read_err = |source| VaultError::Read {
        path: path.to_path_buf(),
        source,
    };
    let too_large = |size| VaultError::TooLarge {
        path: path.to_path_buf(),
        size,
        max: opts.max_bytes,
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(VaultError::NotRegular {
            path: path.to_path_buf(),
            what: kind_of(&meta),
        });
    }
    if meta.len() > opts.max_bytes {
        return Err(too_large(meta.len()));
    }
    let owner = Owner {
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.permissions().mode() & 0o7777,
    };
    let what = format!("vault {}", path.display());
    crate::fsguard::private_or_warn(&meta, &what, "secrets", opts.strict_permissions).map_err(
        |mode| VaultError::Insecure {
            path: path.to_path_buf(),
            mode,
        },
    )?;
    if !can_give(owner.uid, owner.gid) {
        return Err(VaultError::Ownership {
            path: path.to_path_buf(),
            uid: owner.uid,
            gid: owner.gid,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The cap again: the file may have grown since fstat.
    file.take(opts.max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > opts.max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    let mut text = String::from_utf8(bytes).map_err(|e| VaultError::Malformed {
        path: path.to_path_buf(),
        why: format!("not UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok((text, owner))
}

impl FileVault {
    /// Locks and reads an existing vault.
    pub fn open(path: &Path, opts: &VaultOptions) -> Result<Self, VaultError> {
        Self::open_inner(path, opts, false)
    }

    /// Locks and reads a vault, starting an empty one if the file does not exist.
    pub fn open_or_create(path: &Path, opts: &VaultOptions) -> Result<Self, VaultError> {
        Self::open_inner(path, opts, true)
    }

    fn open_inner(path: &Path, opts: &VaultOptions, create: bool) -> Result<Self, VaultError> {
        let real = resolve(path, create)?;
        refuse_non_file(path, &real)?;
        warn_if_folder_is_shared(&real, path);
        let lock = lock(&real, opts.lock_timeout)?;
        remove_stale_temporaries(&real);
        let Some(file) = open_existing(path, &real, create)? else {
            return Ok(Self {
                path: path.to_path_buf(),
                real,
                text: String::new(),
                compact: true,
                members: vec![("records".into(), Member::Records)],
                records: vec![],
                by_uid: HashMap::new(),
                owner: None,
                _lock: lock,
            });
        };
        let (text, owner) = read_checked(file, path, opts)?;
        // The reasons quote keys and UIDs from the file: escape them.
        let (members, records, by_uid) = index(&text).map_err(|why| VaultError::Malformed {
            path: path.to_path_buf(),
            why: crate::text::printable(&why),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            real,
            compact: is_minified(text.trim_end()),
            text,
            members,
            records,
            by_uid,
            owner: Some(owner),
            _lock: lock,
        })
    }

    fn value_at(&self, index: usize) -> Value {
        match &self.records[index] {
            Slot::Changed(v) => v.clone(),
            // Indexed as valid JSON already.
            Slot::Raw(range) => {
                serde_json::from_str(&self.text[range.clone()]).expect("an indexed record parses")
            }
        }
    }

    /// The record `uid`, if the vault has it.
    pub fn record(&self, uid: &str) -> Option<Record> {
        let index = *self.by_uid.get(uid)?;
        Some(match &self.records[index] {
            Slot::Changed(v) => to_record(v),
            Slot::Raw(range) => {
                record_from_json(&self.text[range.clone()]).expect("an indexed record parses")
            }
        })
    }

    /// The index of record `uid`, which a change names.
    fn index_of(&self, uid: &str) -> Result<usize, VaultError> {
        self.by_uid
            .get(uid)
            .copied()
            .ok_or_else(|| VaultError::Vanished {
                uid: crate::text::printable(uid),
            })
    }

    /// Sets `fields` on record `uid` in memory: every field labelled with the
    /// label or an alias (any case) is replaced and relabelled; if there is
    /// none, a custom field is added. Nothing else in the record changes.
    pub fn set_fields(&mut self, uid: &str, fields: &[StoreField]) -> Result<(), VaultError> {
        let index = self.index_of(uid)?;
        let mut value = self.value_at(index);
        apply_fields(
            value.as_object_mut().expect("indexed records are objects"),
            fields,
        );
        self.records[index] = Slot::Changed(value);
        Ok(())
    }

    /// Removes every field labelled `label` (any case) from record `uid`, in memory.
    pub fn remove_field(&mut self, uid: &str, label: &str) -> Result<(), VaultError> {
        let index = self.index_of(uid)?;
        let mut value = self.value_at(index);
        let removed = remove_label(
            value.as_object_mut().expect("indexed records are objects"),
            label,
        );
        if removed {
            self.records[index] = Slot::Changed(value);
        }
        Ok(())
    }

    /// The in-memory state of records `uids`, to put back with `undo` when a
    /// save fails: a later save must not write changes whose store failed.
    pub fn undo_point(&self, uids: &[&str]) -> UndoPoint {
        UndoPoint(
            uids.iter()
                .filter_map(|u| self.by_uid.get(*u))
                .map(|&i| (i, self.records[i].clone()))
                .collect(),
        )
    }

    /// Puts back the records saved in `point`.
    pub fn undo(&mut self, point: UndoPoint) {
        for (i, slot) in point.0 {
            self.records[i] = slot;
        }
    }

    /// Adds a record in memory.
    pub fn add_record(&mut self, record: Map<String, Value>) {
        if let Some(uid) = record.get("uid").and_then(Value::as_str) {
            self.by_uid.insert(uid.to_string(), self.records.len());
        }
        self.records.push(Slot::Changed(Value::Object(record)));
    }

    /// Every record's UID, in file order.
    pub fn uids(&self) -> Vec<String> {
        let mut uids: Vec<(&String, &usize)> = self.by_uid.iter().collect();
        uids.sort_by_key(|(_, i)| **i);
        uids.into_iter().map(|(u, _)| u.clone()).collect()
    }

    /// Whether a record with this UID exists.
    pub fn has_uid(&self, uid: &str) -> bool {
        self.by_uid.contains_key(uid)
    }

    /// Writes the vault, compact: a temporary file beside the real file, with
    /// its owner, group and mode (0600 for a new vault), fsync, rename, fsync of
    /// the folder. A failure leaves the old file as it was.
    pub fn persist(&mut self) -> Result<(), VaultError> {
        let err = |source| VaultError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.real.parent().unwrap_or(Path::new("/"));
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(
                ".{}.",
                self.real.file_name().unwrap_or_default().to_string_lossy()
            ))
            .suffix(".tmp")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(err)?;
        if let Some(o) = self.owner {
            let file = tmp.as_file();
            let meta = file.metadata().map_err(err)?;
            if (meta.uid(), meta.gid()) != (o.uid, o.gid) {
                std::os::unix::fs::fchown(file, Some(o.uid), Some(o.gid)).map_err(err)?;
            }
            // After fchown, which may clear set-id bits.
            file.set_permissions(fs::Permissions::from_mode(o.mode))
                .map_err(err)?;
        }
        // A file that is not compact yet is written through memory once, and
        // what was written becomes the text the next rewrites copy from.
        let mut adopted = None;
        if self.compact {
            let mut out = BufWriter::new(tmp.as_file_mut());
            self.write_compact(&mut out).map_err(err)?;
            out.flush().map_err(err)?;
        } else {
            let mut written = Vec::with_capacity(self.text.len());
            self.write_compact(&mut written).map_err(err)?;
            tmp.as_file_mut().write_all(&written).map_err(err)?;
            adopted = Some(written);
        }
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&self.real).map_err(|e| err(e.error))?;
        // The new file is in place: from here on, failing would make the caller
        // roll back a key the vault now records.
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(
                "vault {} was replaced, but syncing its folder failed ({e}): a power loss \
                 now could bring back the old file",
                self.path.display()
            );
        }
        tracing::debug!(path = %self.path.display(), "vault saved");
        if let Some(written) = adopted {
            self.adopt(written);
        }
        Ok(())
    }

    /// Makes the file just written, compact, the text records are read and
    /// copied from. Its index cannot fail (this host wrote it); if it did,
    /// the old text stays, which is only slower.
    fn adopt(&mut self, written: Vec<u8>) {
        let Ok(text) = String::from_utf8(written) else {
            return;
        };
        if let Ok((members, records, by_uid)) = index(&text) {
            (self.text, self.members, self.records, self.by_uid) = (text, members, records, by_uid);
            self.compact = true;
        }
    }

    /// Raw text as a rewrite writes it: minified, or as it is once compact.
    fn copy_raw(&self, range: std::ops::Range<usize>, out: &mut impl Write) -> io::Result<()> {
        if self.compact {
            out.write_all(&self.text.as_bytes()[range])
        } else {
            minify(&self.text[range], out)
        }
    }

    fn write_compact(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(b"{")?;
        for (i, (key, member)) in self.members.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, key)?;
            out.write_all(b":")?;
            match member {
                Member::Raw(range) => self.copy_raw(range.clone(), out)?,
                Member::Records => {
                    out.write_all(b"[")?;
                    for (j, slot) in self.records.iter().enumerate() {
                        if j > 0 {
                            out.write_all(b",")?;
                        }
                        match slot {
                            Slot::Changed(v) => serde_json::to_writer(&mut *out, v)?,
                            Slot::Raw(range) => self.copy_raw(range.clone(), out)?,
                        }
                    }
                    out.write_all(b"]")?;
                }
            }
        }
        out.write_all(b"}\n")
    }
}

impl Vault for FileVault {
    fn uids(&self) -> Vec<String> {
        FileVault::uids(self)
    }

    fn record(&self, uid: &str) -> Option<Record> {
        FileVault::record(self, uid)
    }

    fn missing(&self) -> (String, &'static str) {
        (format!("vault {}", self.path.display()), "")
    }

    fn rewrites_whole(&self) -> bool {
        true
    }

    /// Every change in one atomic rewrite. If the rewrite fails, the records go
    /// back to how they were, so a later save never writes a failed change.
    fn save(&mut self, batch: &[Change]) -> Vec<Result<(), Arc<VaultError>>> {
        let uids: Vec<&str> = batch.iter().map(|c| c.uid.as_str()).collect();
        let undo = self.undo_point(&uids);
        let applied: Vec<Result<(), Arc<VaultError>>> = batch
            .iter()
            .map(|c| {
                self.set_fields(&c.uid, &c.fields)
                    .and_then(|()| {
                        c.remove
                            .iter()
                            .try_for_each(|label| self.remove_field(&c.uid, label))
                    })
                    .map_err(Arc::new)
            })
            .collect();
        let saved = self.persist().map_err(Arc::new);
        if saved.is_err() {
            self.undo(undo);
        }
        applied.into_iter().map(|r| r.and(saved.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ValueKind;
    use crate::secret::Secret;
    use crate::vault::file_lock::lock_path;
    use std::time::Duration;

    fn t() -> VaultOptions {
        VaultOptions {
            lock_timeout: Duration::from_secs(1),
            ..VaultOptions::default()
        }
    }

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("vault.json");
        fs::write(&p, body).unwrap();
        p
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    fn field(label: &str, kind: ValueKind, value: &str) -> StoreField {
        StoreField {
            label: label.into(),
            aliases: vec!["aws_acess_key_id".into()],
            kind,
            value: Secret::new(value),
        }
    }

    #[test]
    fn updates_fields_and_keeps_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"version": 7, "records": [{"uid": "u", "type": "pamUser", "title": "a", "extra": {"x": 1},
              "fields": [{"type": "login", "value": ["alice"]}],
              "custom": [{"type": "text", "label": "AWS_ACESS_KEY_ID", "value": ["OLD"], "note": "keep"}]}]}"#,
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let mut v = FileVault::open(&p, &t()).unwrap();
        v.set_fields(
            "u",
            &[
                field("aws_access_key_id", ValueKind::Text, "NEW"),
                field("aws_secret_access_key", ValueKind::Secret, "S3CRET"),
            ],
        )
        .unwrap();
        v.persist().unwrap();
        drop(v);
        let doc: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        let r = &doc["records"][0];
        assert_eq!(doc["version"], 7);
        assert_eq!(r["extra"]["x"], 1);
        assert_eq!(r["custom"][0]["label"], "aws_access_key_id");
        assert_eq!(r["custom"][0]["value"][0], "NEW");
        assert_eq!(r["custom"][0]["note"], "keep");
        assert_eq!(r["custom"][1]["type"], "secret");
        assert_eq!(r["custom"][1]["value"][0], "S3CRET");
        // The mode survives the rewrite.
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    /// Values survive exactly: big and odd numbers, key order, unknown content,
    /// string escapes and spaces inside strings.
    #[test]
    fn a_rewrite_keeps_numbers_and_order_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let body = r#"{"z": 12345678901234567890123, "a": [-0, 1.0, 1e400, -0.0, 1.50],
            "records": [{"uid": "u", "type": "pamUser", "n": 18446744073709551616, "m": {"b": 1, "a": 2},
              "custom": [{"type": "text", "label": "aws_access_key_id", "value": ["OLD"]}]},
              {"uid": "other", "type": "login", "big": -98765432109876543210.000, "s": "a \" b\\ \u00e9 \n"}]}"#;
        let p = write(dir.path(), body);
        let mut v = FileVault::open(&p, &t()).unwrap();
        v.set_fields("u", &[field("aws_access_key_id", ValueKind::Text, "NEW")])
            .unwrap();
        v.persist().unwrap();
        drop(v);
        let out = fs::read_to_string(&p).unwrap();
        assert_eq!(
            out,
            concat!(
                r#"{"z":12345678901234567890123,"a":[-0,1.0,1e400,-0.0,1.50],"records":["#,
                r#"{"uid":"u","type":"pamUser","n":18446744073709551616,"m":{"b":1,"a":2},"#,
                r#""custom":[{"type":"text","label":"aws_access_key_id","value":["NEW"]}]},"#,
                r#"{"uid":"other","type":"login","big":-98765432109876543210.000,"s":"a \" b\\ \u00e9 \n"}]}"#,
                "\n"
            )
        );
    }

    /// A pretty vault is minified by its first rewrite and then copied from
    /// the compact text: a second rewrite in the same run writes exactly what
    /// minifying the original would, with both changes.
    #[test]
    fn after_its_first_rewrite_a_vault_is_copied_not_minified_again() {
        let dir = tempfile::tempdir().unwrap();
        let body = "{\n  \"records\": [\n    {\"uid\": \"a\", \"type\": \"pamUser\", \"n\": 1.50, \"s\": \"x  y\\\" z\"},\n    {\"uid\": \"b\", \"type\": \"pamUser\", \"fields\": [ ]}\n  ],\n  \"v\": [ 1, 2 ]\n}\n";
        let p = write(dir.path(), body);
        let mut v = FileVault::open(&p, &t()).unwrap();
        assert!(!v.compact);
        v.set_fields("a", &[field("k1", ValueKind::Text, "one")])
            .unwrap();
        v.persist().unwrap();
        assert!(v.compact, "the rewrite was not adopted");
        let first = fs::read_to_string(&p).unwrap();
        assert!(is_minified(first.trim_end()), "{first}");
        v.set_fields("b", &[field("k2", ValueKind::Text, "two")])
            .unwrap();
        v.persist().unwrap();
        drop(v);
        let second = fs::read_to_string(&p).unwrap();
        assert!(second.contains(r#""n":1.50,"s":"x  y\" z""#), "{second}");
        assert!(second.trim_end().ends_with(r#""v":[1,2]}"#), "{second}");
        let doc: Value = serde_json::from_str(&second).unwrap();
        assert_eq!(doc["records"][0]["custom"][0]["value"][0], "one");
        assert_eq!(doc["records"][1]["custom"][0]["value"][0], "two");
        // A vault that is compact already is copied from the start.
        assert!(FileVault::open(&p, &t()).unwrap().compact);
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "\u{feff}{\"records\": [{\"uid\": \"u\", \"type\": \"pamUser\"}]}",
        );
        let v = FileVault::open(&p, &t()).unwrap();
        assert_eq!(
            (&v as &dyn Vault)
                .named("u", "-u", Some("pamUser"))
                .unwrap()
                .uid,
            "u"
        );
    }

    #[test]
    fn duplicate_keys_anywhere_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (body, key) in [
            (r#"{"records": [], "records": []}"#, "records"),
            (r#"{"records": [{"uid": "u", "uid": "v"}]}"#, "uid"),
            (
                r#"{"records": [{"uid": "u", "custom": [{"label": "a", "label": "b"}]}]}"#,
                "label",
            ),
            (r#"{"x": {"k": 1, "k": 2}, "records": []}"#, "k"),
        ] {
            let p = write(dir.path(), body);
            let e = FileVault::open(&p, &t()).unwrap_err();
            assert!(
                matches!(&e, VaultError::Malformed { why, .. } if why.contains(&format!("\"{key}\" appears twice"))),
                "{body}: {e}"
            );
        }
    }

    /// A record, or the file, that is not an object is refused by its kind:
    /// the message never quotes the value, which may be a secret pasted in.
    #[test]
    fn a_value_in_the_wrong_place_is_named_by_its_kind_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        for (body, kind) in [
            (
                r#"{"records": ["wJalrXUtnFEMI/K7MDENG"]}"#,
                "a string, not an object",
            ),
            (r#"{"records": [1234567890]}"#, "a number, not an object"),
            (
                r#"{"records": [["wJalrXUtnFEMI/K7MDENG"]]}"#,
                "an array, not an object",
            ),
            (r#""wJalrXUtnFEMI/K7MDENG""#, "a string, not an object"),
            (r#"1234567890"#, "a number, not an object"),
            (r#"{"records": [1234567890.5]}"#, "a number, not an object"),
        ] {
            let p = write(dir.path(), body);
            let e = FileVault::open(&p, &t()).unwrap_err().to_string();
            assert!(e.contains(kind), "{body}: {e}");
            assert!(!e.contains("wJalr") && !e.contains("1234567890"), "{e}");
        }
    }

    /// A key with control characters is named escaped in the error.
    #[test]
    fn a_duplicate_key_is_named_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"records": [{"uid": "u", "a\u001b[2Jb": 1, "a\u001b[2Jb": 2}]}"#,
        );
        let e = FileVault::open(&p, &t()).unwrap_err().to_string();
        assert!(e.contains("appears twice"), "{e}");
        assert!(!e.contains('\u{1b}'), "{e:?}");
    }

    /// serde_json's own tokens for numbers and raw values, spelled out as
    /// keys by a record editor (even escaped), are refused at open rather
    /// than failing every later read of the record; real numbers still read.
    #[test]
    fn keys_that_imitate_serde_jsons_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for body in [
            r#"{"records": [{"uid": "u", "title": {"$serde_json::private::Number": "x"}}]}"#,
            r#"{"records": [{"uid": "u", "title": {"\u0024serde_json::private::Number": "1", "b": 2}}]}"#,
            r#"{"records": [{"uid": "u", "custom": [{"value": [{"$serde_json::private::RawValue": "{"}]}]}]}"#,
        ] {
            let p = write(dir.path(), body);
            let e = FileVault::open(&p, &t()).unwrap_err();
            assert!(
                matches!(&e, VaultError::Malformed { why, .. } if why.contains("is reserved; rename it")),
                "{body}: {e}"
            );
        }
        let p = write(
            dir.path(),
            r#"{"records": [{"uid": "u", "type": "pamUser", "revision": 12345678901234567890123, "fields": [{"type": "n", "value": [1.50]}]}]}"#,
        );
        let v = FileVault::open(&p, &t()).unwrap();
        let record = v.record("u").unwrap();
        assert_eq!(record.fields[0].values[0].expose(), "1.50");
    }

    /// Every field under the label or an alias gets the new value.
    #[test]
    fn every_field_with_the_label_or_an_alias_is_updated() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"records": [{"uid": "u", "type": "pamUser",
              "fields": [{"type": "text", "label": "aws_access_key_id", "value": ["OLD"]}],
              "custom": [{"type": "text", "label": "AWS_ACESS_KEY_ID", "value": ["OLD"]},
                         {"type": "text", "label": "aws_access_key_id", "value": ["OLD"]}]}]}"#,
        );
        let mut v = FileVault::open(&p, &t()).unwrap();
        v.set_fields("u", &[field("aws_access_key_id", ValueKind::Text, "NEW")])
            .unwrap();
        let r = v.record("u").unwrap();
        let values: Vec<&str> = r.fields.iter().map(|f| f.values[0].expose()).collect();
        assert_eq!(values, ["NEW", "NEW", "NEW"]);
    }

    #[test]
    fn fifos_devices_and_oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.json");
        mkfifo(&fifo);
        let e = FileVault::open(&fifo, &t()).unwrap_err();
        assert!(
            matches!(e, VaultError::NotRegular { what: "a FIFO", .. }),
            "{e}"
        );
        let e = FileVault::open(Path::new("/dev/zero"), &t()).unwrap_err();
        assert!(
            matches!(
                e,
                VaultError::NotRegular {
                    what: "a device",
                    ..
                }
            ),
            "{e}"
        );
        let p = write(
            dir.path(),
            &format!("{{\"records\": [], \"pad\": \"{}\"}}", "x".repeat(2000)),
        );
        let small = VaultOptions {
            max_bytes: 1024,
            ..t()
        };
        let e = FileVault::open(&p, &small).unwrap_err();
        assert!(matches!(e, VaultError::TooLarge { max: 1024, .. }), "{e}");
    }

    #[test]
    fn a_lock_file_that_is_a_link_or_fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), r#"{"records": []}"#);
        let target = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, lock_path(&p)).unwrap();
        let e = FileVault::open(&p, &t()).unwrap_err();
        assert!(matches!(e, VaultError::LockNotRegular { .. }), "{e}");
        assert!(!target.exists(), "the lock followed the link");
        fs::remove_file(lock_path(&p)).unwrap();
        mkfifo(&lock_path(&p));
        let e = FileVault::open(&p, &t()).unwrap_err();
        assert!(matches!(e, VaultError::LockNotRegular { .. }), "{e}");
    }

    #[test]
    fn reads_records_and_checks_types() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"records": [{"uid": "u", "type": "pamUser", "title": "a",
               "fields": [{"type": "login", "value": ["alice"]}, {"type": "host", "value": [{"hostName": "h"}]}]}]}"#,
        );
        let v = FileVault::open(&p, &t()).unwrap();
        let r = (&v as &dyn Vault)
            .named("u", "-u", Some("pamUser"))
            .unwrap();
        assert_eq!(r.fields[0].values[0].expose(), "alice");
        assert_eq!(r.fields[1].values[0].expose(), r#"{"hostName":"h"}"#);
        assert!(matches!(
            (&v as &dyn Vault).named("u", "-c", Some("login")),
            Err(VaultError::WrongType { .. })
        ));
        assert!(matches!(
            (&v as &dyn Vault).named("nope", "-c", None),
            Err(VaultError::NoRecord { .. })
        ));
    }

    #[test]
    fn malformed_vaults_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for body in [
            "{not json",
            "[]",
            r#"{"records": {}}"#,
            r#"{"records": [{"type": "x"}]}"#,
            r#"{"records": [{"uid": "a"}, {"uid": "a"}]}"#,
            r#"{"records": [{"uid": "a", "custom": {}}]}"#,
        ] {
            let p = write(dir.path(), body);
            let e = FileVault::open(&p, &t()).unwrap_err();
            assert!(matches!(e, VaultError::Malformed { .. }), "{body}: {e}");
        }
        assert!(matches!(
            FileVault::open(dir.path(), &t()),
            Err(VaultError::IsFolder { .. })
        ));
        assert!(matches!(
            FileVault::open(&dir.path().join("missing.json"), &t()),
            Err(VaultError::NotFound { .. })
        ));
    }

    #[test]
    fn a_second_opener_waits_then_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), r#"{"records": []}"#);
        let first = FileVault::open(&p, &t()).unwrap();
        let e = FileVault::open(
            &p,
            &VaultOptions {
                lock_timeout: Duration::from_millis(120),
                ..t()
            },
        )
        .unwrap_err();
        assert!(matches!(e, VaultError::Locked { .. }), "{e}");
        drop(first);
        assert!(FileVault::open(&p, &t()).is_ok());
    }
}
