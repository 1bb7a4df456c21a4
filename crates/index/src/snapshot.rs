//! Snapshots: a consistent copy of a collection, made while it serves, and loaded back whole.
//!
//! A snapshot is a folder with the collection's manifest, its tantivy index and the vector
//! segments its last commit names, plus `snapshot.json` describing it. It is taken holding
//! the collection's write lock (the same one every write takes, in this process or another),
//! so no commit lands while files are copied; searches go on. Both making and loading one
//! build in a hidden folder and rename it into place, so a crash leaves no half copy behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::collection::{committed_generation, Collection, DataDir, TANTIVY_DIR};
use crate::error::IndexError;
use crate::files::{copy_tree_synced, io_error, remove_dir, rename_synced, write_synced};
use crate::vectors::{VectorIndex, VECTORS_DIR};

/// The file that describes a snapshot, in its folder.
pub const SNAPSHOT_FILE: &str = "snapshot.json";
/// The folder, inside the data folder, where snapshots made by name go.
const SNAPSHOTS_DIR: &str = ".snapshots";
/// How long a snapshot waits for a write in another process to finish.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The snapshot's name (its folder's name).
    pub name: String,
    /// The collection it was taken of.
    pub collection: String,
    /// When it was taken, as UTC `YYYY-MM-DDTHH:MM:SSZ`.
    pub created: String,
    pub documents: u64,
    pub bytes: u64,
}

impl DataDir {
    /// Where snapshots made by name are kept: `.snapshots` in the data folder.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.path().join(SNAPSHOTS_DIR)
    }

    /// The folder of the snapshot `snapshot` in [`DataDir::snapshots_dir`]; the name must be
    /// a valid collection-style name, so it cannot point elsewhere.
    pub fn snapshot_path(&self, snapshot: &str) -> Result<PathBuf, IndexError> {
        crate::collection::validate_name(snapshot)?;
        Ok(self.snapshots_dir().join(snapshot))
    }

    /// Snapshots collection `name` into the snapshots folder, named after it and the time.
    pub fn snapshot(&self, name: &str) -> Result<SnapshotInfo, IndexError> {
        let (created, stamp) = utc_now();
        let base = format!("{name}-{stamp}");
        let mut snapshot = base.clone();
        let mut n = 1;
        while self.snapshot_path(&snapshot)?.exists() {
            n += 1;
            snapshot = format!("{base}-{n}");
        }
        let dir = self.snapshots_dir();
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        self.snapshot_to(name, &self.snapshot_path(&snapshot)?, &snapshot, created)
    }

    /// Snapshots collection `name` into the new folder `destination`.
    pub fn snapshot_into(
        &self,
        name: &str,
        destination: &Path,
    ) -> Result<SnapshotInfo, IndexError> {
        let (created, _) = utc_now();
        let snapshot = destination
            .file_name()
            .map_or_else(|| name.to_string(), |file| file.to_string_lossy().into_owned());
        self.snapshot_to(name, destination, &snapshot, created)
    }

    fn snapshot_to(
        &self,
        name: &str,
        destination: &Path,
        snapshot: &str,
        created: String,
    ) -> Result<SnapshotInfo, IndexError> {
        if destination.exists() {
            return Err(IndexError::Io {
                path: destination.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists"),
            });
        }
        let collection = self.open(name)?;
        // No commit can land while this is held.
        let _writer = wait_for_writer(&collection)?;
        let dir = collection.path();
        let generation = committed_generation(collection.index(), dir)?;
        let committed = VectorIndex::committed_files(&dir.join(VECTORS_DIR), generation)?;
        let skip = |relative: &Path| {
            let tantivy_lock = relative.starts_with(TANTIVY_DIR)
                && relative
                    .file_name()
                    .is_some_and(|file| file.to_string_lossy().ends_with(".lock"));
            // Only what the last commit names: no merge being built, no superseded commit.
            let uncommitted = relative.starts_with(VECTORS_DIR)
                && relative != Path::new(VECTORS_DIR)
                && !committed.contains(relative);
            tantivy_lock || uncommitted
        };
        let parent = destination.parent().unwrap_or(Path::new("."));
        let building = parent.join(format!(".{snapshot}.snapshotting-{}", std::process::id()));
        let built = copy_tree_synced(dir, &building, &skip).and_then(|bytes| {
            // The copy must open as a collection, with the same documents.
            let copy = Collection::open_dir(name, building.clone())?;
            let info = SnapshotInfo {
                name: snapshot.to_string(),
                collection: name.to_string(),
                created,
                documents: copy.document_count(),
                bytes,
            };
            let json = serde_json::to_vec_pretty(&info).expect("serializes");
            write_synced(&building.join(SNAPSHOT_FILE), &json)?;
            Ok(info)
        });
        let info = match built {
            Ok(info) => info,
            Err(error) => {
                let _ = remove_dir(&building);
                return Err(error);
            }
        };
        rename_synced(&building, destination)?;
        Ok(info)
    }

    /// The snapshots in the snapshots folder, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, IndexError> {
        let dir = self.snapshots_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(IndexError::Io { path: dir, source }),
        };
        let mut found = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if let Ok(info) = read_info(&entry.path()) {
                found.push(info);
            }
        }
        found.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
        Ok(found)
    }

    /// Loads the snapshot in folder `snapshot` as collection `name`. An existing collection of
    /// that name is an error unless `replace`, in which case it is swapped out whole (holding
    /// its write lock, so no write of another process is lost in between).
    pub fn restore(
        &self,
        name: &str,
        snapshot: &Path,
        replace: bool,
    ) -> Result<Collection, IndexError> {
        let dir = self.path().join(name);
        crate::collection::validate_name(name)?;
        read_info(snapshot)?;
        let existing = if self.exists(name)? {
            if !replace {
                return Err(IndexError::CollectionExists(name.to_string()));
            }
            Some(self.open(name)?)
        } else {
            None
        };
        let _writer = existing.as_ref().map(wait_for_writer).transpose()?;
        std::fs::create_dir_all(self.path()).map_err(io_error(self.path()))?;
        let building = self.hidden(name, "restoring");
        let skip = |relative: &Path| relative == Path::new(SNAPSHOT_FILE);
        let built = copy_tree_synced(snapshot, &building, &skip)
            .and_then(|_| Collection::open_dir(name, building.clone()).map(drop));
        if let Err(error) = built {
            let _ = remove_dir(&building);
            return Err(error);
        }
        if existing.is_some() {
            let replaced = self.hidden(name, "replaced");
            rename_synced(&dir, &replaced)?;
            rename_synced(&building, &dir)?;
            remove_dir(&replaced)?;
        } else {
            rename_synced(&building, &dir)?;
        }
        self.open(name)
    }
}

/// The description of the snapshot in `dir`, which must also hold a collection.
fn read_info(dir: &Path) -> Result<SnapshotInfo, IndexError> {
    let path = dir.join(SNAPSHOT_FILE);
    let not_a_snapshot =
        |message: String| IndexError::InvalidManifest { path: path.clone(), message };
    let bytes = std::fs::read(&path).map_err(|e| {
        not_a_snapshot(format!("not a snapshot ({e}); make one with `cloze snapshot`"))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| not_a_snapshot(e.to_string()))
}

/// The collection's write lock, waiting while another process writes.
fn wait_for_writer(collection: &Collection) -> Result<tantivy::IndexWriter, IndexError> {
    let started = std::time::Instant::now();
    loop {
        match collection.writer() {
            Err(IndexError::Tantivy { source: tantivy::TantivyError::LockFailure(..), .. })
                if started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ` and as the compact `YYYYMMDDTHHMMSSZ` for names.
fn utc_now() -> (String, String) {
    utc(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Seconds since 1970 in UTC, in both forms of [`utc_now`].
fn utc(seconds: u64) -> (String, String) {
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z"),
        format!("{year:04}{month:02}{day:02}T{hour:02}{minute:02}{second:02}Z"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AnalyzerSettings;
    use cloze_corpus::Document;

    fn document(id: &str, text: &str) -> Result<Document, IndexError> {
        Ok(Document {
            id: id.to_string(),
            title: String::new(),
            text: text.to_string(),
            metadata: Default::default(),
            vector: None,
        })
    }

    #[test]
    fn a_snapshot_restores_to_the_state_it_was_taken_in() {
        let root = tempfile::tempdir().unwrap();
        let data = DataDir::new(root.path());
        let mut collection = data.create("c", AnalyzerSettings::default(), None).unwrap();
        collection.ingest([document("1", "dogs and cats")], |_| {}).unwrap();
        let info = data.snapshot("c").unwrap();
        assert_eq!((info.collection.as_str(), info.documents), ("c", 1));
        assert!(info.name.starts_with("c-") && info.name.ends_with('Z'), "{}", info.name);
        // Later changes are not in it.
        collection.ingest([document("2", "birds")], |_| {}).unwrap();
        drop(collection);
        assert_eq!(data.snapshots().unwrap(), std::slice::from_ref(&info));
        // Snapshots are not collections.
        assert_eq!(data.collection_names().unwrap(), ["c"]);

        let path = data.snapshot_path(&info.name).unwrap();
        let restored = data.restore("copy", &path, false).unwrap();
        assert_eq!(restored.document_ids().unwrap(), ["1"]);
        assert!(matches!(data.restore("c", &path, false), Err(IndexError::CollectionExists(_))));
        let replaced = data.restore("c", &path, true).unwrap();
        assert_eq!(replaced.document_ids().unwrap(), ["1"]);
        assert_eq!(data.collection_names().unwrap(), ["c", "copy"]);
        // Nothing hidden is left behind but the snapshots folder.
        let hidden: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with('.'))
            .collect();
        assert_eq!(hidden, [SNAPSHOTS_DIR]);

        assert!(matches!(data.snapshot_path("../x"), Err(IndexError::InvalidName(_))));
        let error = data.restore("d", root.path(), false).err().unwrap().to_string();
        assert!(error.contains("not a snapshot"), "{error}");
    }

    #[test]
    fn dates_come_out_in_utc_calendar_form() {
        // Checked against Python's datetime.fromtimestamp(s, UTC).
        assert_eq!(utc(0).0, "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400).0, "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_000_000), ("2026-11-18T11:06:40Z".into(), "20261118T110640Z".into()));
        assert_eq!(utc(4_107_542_399).0, "2100-02-28T23:59:59Z");
    }
}
