//! The file vault's lock: a separate lock file beside the vault, never a
//! link or a FIFO, held for the whole run.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::VaultError;
use crate::fsguard::kind_of;

pub(super) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// Takes the exclusive lock on `path`'s lock file, waiting at most `timeout`.
pub(super) fn lock(path: &Path, timeout: Duration) -> Result<File, VaultError> {
    let lock_file = lock_path(path);
    let not_regular = |what| VaultError::LockNotRegular {
        path: lock_file.clone(),
        what,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(crate::fsguard::SAFE_OPEN)
        .open(&lock_file)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => not_regular("a symbolic link"),
            Some(libc::ENXIO) => not_regular("a FIFO or device"),
            _ => VaultError::Lock {
                path: lock_file.clone(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(|source| VaultError::Lock {
        path: lock_file.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(not_regular(kind_of(&meta)));
    }
    let started = Instant::now();
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < timeout => {
                // Say once why nothing happens: an operator's `run` may wait
                // for a whole gateway pass.
                if !told {
                    tracing::info!(
                        vault = ?path,
                        timeout = ?timeout,
                        "the vault is locked by another rotate-host run; waiting for the vault lock"
                    );
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(VaultError::Locked {
                    path: path.to_path_buf(),
                    waited: timeout,
                });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(VaultError::Lock {
                    path: lock_file,
                    source,
                });
            }
        }
    }
}
