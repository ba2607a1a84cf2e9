//! Opening a file named by a flag without being turned against the host: a
//! FIFO or device is refused without blocking (the open never waits for a
//! writer), and what is checked is what is read (one open file).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Never block on a FIFO, never leak into a child.
pub const NONBLOCKING: i32 = libc::O_NONBLOCK | libc::O_CLOEXEC;

/// `NONBLOCKING`, and never follow a link: for files the host writes or
/// keeps private (the vault, its lock, the audit log, the compile cache).
pub const SAFE_OPEN: i32 = libc::O_NOFOLLOW | NONBLOCKING;

/// Whether users other than a folder's owner may swap what is in it: it is
/// group or world writable, without the sticky bit.
pub fn others_may_swap(folder: &Metadata) -> bool {
    let mode = folder.permissions().mode();
    mode & 0o022 != 0 && mode & 0o1000 == 0
}

/// A file that holds secrets should be its owner's alone. If group or
/// others may read or write it, says so in a warning naming `what` (and what
/// it holds), or under `strict` returns its mode for the caller's refusal.
pub fn private_or_warn(meta: &Metadata, what: &str, holds: &str, strict: bool) -> Result<(), u32> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if strict {
        return Err(mode);
    }
    tracing::warn!(
        "{what} is readable or writable by group or others (mode {mode:04o}) and holds {holds}; \
         run `chmod 600` on it (--strict-permissions refuses such files)"
    );
    Ok(())
}

/// Why a file or folder that decides what the host runs is not the
/// operator's alone: owned by a user other than this one or root, or open to
/// changes by group or others.
pub fn not_operators(meta: &Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "owned by uid {}, not this user or root",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    (mode & 0o022 != 0).then(|| format!("group or others may change it (mode {mode:04o})"))
}

/// What a file that is not a regular file is, for messages.
pub fn kind_of(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Opens `path` (following links) for reading, refusing anything but a
/// regular file with an error that says what it is.
pub fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(NONBLOCKING)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {}, not a regular file", kind_of(&meta)),
        ));
    }
    Ok((file, meta))
}

/// Reads a regular file of at most `max` bytes whole.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (file, meta) = open_regular(path)?;
    if meta.len() > max {
        return Err(too_large(max));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok(bytes)
}

fn too_large(max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("it is over {} MiB", max >> 20),
    )
}
