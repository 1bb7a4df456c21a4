//! File operations that survive a crash: data is synced before anything names it, and a folder
//! is synced after entries appear in it or leave it, so a rename is on disk before it is
//! acknowledged.

use std::io::{Read, Write};
use std::path::Path;

use crate::error::IndexError;

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io { path: path.to_path_buf(), source }
}

pub(crate) fn read_all(path: &Path) -> Result<Vec<u8>, IndexError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(io_error(path))?;
    Ok(bytes)
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    let mut file = std::fs::File::create(path).map_err(io_error(path))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_error(path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), IndexError> {
    std::fs::File::open(dir).and_then(|file| file.sync_all()).map_err(io_error(dir))
}

pub(crate) fn remove_dir(dir: &Path) -> Result<(), IndexError> {
    std::fs::remove_dir_all(dir).map_err(io_error(dir))
}

/// Renames `from` to `to` and syncs the folders of both, so the rename survives power loss.
pub(crate) fn rename_synced(from: &Path, to: &Path) -> Result<(), IndexError> {
    std::fs::rename(from, to).map_err(io_error(to))?;
    for parent in [to.parent(), from.parent()].into_iter().flatten() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Copies the tree `from` into the new folder `to`, every file and folder synced, skipping
/// entries `skip` refuses (given the path relative to `from`).
pub(crate) fn copy_tree_synced(
    from: &Path,
    to: &Path,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<u64, IndexError> {
    fn copy(
        root: &Path,
        from: &Path,
        to: &Path,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<u64, IndexError> {
        std::fs::create_dir(to).map_err(io_error(to))?;
        let mut bytes = 0;
        for entry in std::fs::read_dir(from).map_err(io_error(from))? {
            let entry = entry.map_err(io_error(from))?;
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap_or(&path);
            if skip(relative) {
                continue;
            }
            let target = to.join(entry.file_name());
            let kind = entry.file_type().map_err(io_error(&path))?;
            if kind.is_dir() {
                bytes += copy(root, &path, &target, skip)?;
            } else if kind.is_file() {
                bytes += std::fs::copy(&path, &target).map_err(io_error(&path))?;
                std::fs::File::open(&target)
                    .and_then(|file| file.sync_all())
                    .map_err(io_error(&target))?;
            }
        }
        sync_dir(to)?;
        Ok(bytes)
    }
    copy(from, from, to, skip)
}

/// Where there is no /proc to ask, every process counts as running: nothing is removed.
pub(crate) fn process_is_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    pid == std::process::id() || !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}
