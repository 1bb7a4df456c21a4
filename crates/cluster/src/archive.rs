//! A folder as one byte string and back: how a snapshot travels through the object store.

use std::path::{Component, Path, PathBuf};

use crate::ClusterError;

fn io(path: &Path) -> impl Fn(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io { path: path.to_path_buf(), source }
}

/// Every file under `dir`: its path relative to `dir`, its length, its bytes.
pub(crate) fn pack(dir: &Path) -> Result<Vec<u8>, ClusterError> {
    let mut packed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).map_err(io(&folder))? {
            let path = entry.map_err(io(&folder))?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative =
                path.strip_prefix(dir).expect("under dir").to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            packed.extend((relative.len() as u32).to_le_bytes());
            packed.extend(relative.as_bytes());
            packed.extend((bytes.len() as u64).to_le_bytes());
            packed.extend(bytes);
        }
    }
    Ok(packed)
}

/// Writes what [`pack`] made into `dir`, refusing paths that leave it.
pub(crate) fn unpack(mut packed: &[u8], dir: &Path) -> Result<(), ClusterError> {
    let broken = || ClusterError::Invalid("a snapshot archive is cut short or damaged".into());
    fn take<'a>(packed: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (packed.get(..n)?, packed.get(n..)?);
        *packed = rest;
        Some(head)
    }
    while !packed.is_empty() {
        let length =
            u32::from_le_bytes(take(&mut packed, 4).ok_or_else(broken)?.try_into().expect("4"));
        let name = take(&mut packed, length as usize).ok_or_else(broken)?;
        let name = PathBuf::from(String::from_utf8(name.to_vec()).map_err(|_| broken())?);
        if !name.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(broken());
        }
        let size =
            u64::from_le_bytes(take(&mut packed, 8).ok_or_else(broken)?.try_into().expect("8"));
        let bytes =
            take(&mut packed, usize::try_from(size).map_err(|_| broken())?).ok_or_else(broken)?;
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_round_trips() {
        let from = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("a/b")).unwrap();
        std::fs::write(from.path().join("a/b/c.bin"), [1u8, 2, 3]).unwrap();
        std::fs::write(from.path().join("top.json"), "{}").unwrap();
        let packed = pack(from.path()).unwrap();
        let to = tempfile::tempdir().unwrap();
        unpack(&packed, to.path()).unwrap();
        assert_eq!(std::fs::read(to.path().join("a/b/c.bin")).unwrap(), [1, 2, 3]);
        assert_eq!(std::fs::read_to_string(to.path().join("top.json")).unwrap(), "{}");
        assert!(unpack(&packed[..packed.len() - 1], to.path()).is_err());
    }
}
