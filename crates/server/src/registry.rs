//! The open collections, shared by every request.
//!
//! Searches read a snapshot (`Arc<Collection>`) and never wait for writes. A write changes and
//! commits a clone of the open [`Collection`] (cheap: its indexes and vector segments are
//! shared, and a write adds to them), and then publishes it as the new snapshot: searches that
//! started before keep the old one. Writes to one collection take turns.
//!
//! Merging vector segments is left to one background thread ([`Registry::merge_pending`]): it
//! builds a merge from a snapshot without holding any lock, and only putting it in place takes
//! the collection's turn to write, for as long as a small write takes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use cloze_index::{Collection, DataDir, IndexError, SnapshotInfo};

use crate::error::ApiError;

pub struct Registry {
    data_dir: DataDir,
    open: Mutex<HashMap<String, Arc<Handle>>>,
}

/// One open collection.
pub struct Handle {
    name: String,
    current: RwLock<Arc<Collection>>,
    /// Held for the whole of a write, so writes to the collection take turns.
    writing: Mutex<()>,
    /// When the last write (not merge) was published.
    last_write: Mutex<Instant>,
}

/// Once a collection has had no write for this long, its segments are merged into one, which
/// searches fastest.
pub const IDLE_MERGE_AFTER: Duration = Duration::from_secs(30);

/// A lock whose holder panicked still guards consistent data here: every change is published
/// whole or not at all.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    pub fn new(data_dir: DataDir) -> Registry {
        Registry { data_dir, open: Mutex::new(HashMap::new()) }
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.data_dir
    }

    /// The names of every collection in the data folder, sorted.
    pub fn names(&self) -> Result<Vec<String>, ApiError> {
        Ok(self.data_dir.collection_names()?)
    }

    /// The collection `name`, opened on first use.
    pub fn get(&self, name: &str) -> Result<Arc<Handle>, ApiError> {
        let mut open = lock(&self.open);
        if let Some(handle) = open.get(name) {
            return Ok(handle.clone());
        }
        let collection = self.data_dir.open(name)?;
        let handle = Arc::new(Handle::new(name, collection));
        open.insert(name.to_string(), handle.clone());
        Ok(handle)
    }

    /// Creates a collection with `create` while no other request can open or create one of
    /// the same name.
    pub fn create(
        &self,
        name: &str,
        create: impl FnOnce(&DataDir) -> Result<Collection, IndexError>,
    ) -> Result<Arc<Handle>, ApiError> {
        let mut open = lock(&self.open);
        let collection = create(&self.data_dir)?;
        let handle = Arc::new(Handle::new(name, collection));
        open.insert(name.to_string(), handle.clone());
        Ok(handle)
    }

    /// Deletes the collection's folder after any write in progress. Searches already running
    /// finish on what they hold.
    pub fn delete(&self, name: &str) -> Result<(), ApiError> {
        let handle = self.get(name)?;
        let _writing = lock(&handle.writing);
        let mut open = lock(&self.open);
        self.data_dir.delete(name)?;
        open.remove(name);
        Ok(())
    }

    /// Runs at most one vector merge, for the first open collection whose segments need one:
    /// by the merge policy, or into one segment once the collection has been idle for
    /// [`IDLE_MERGE_AFTER`]. It is built on the threads of `busy` while writes come in
    /// (merging must leave cores to the writes and searches it serves), else of `idle`.
    /// Returns whether it ran one.
    /// The merge is built without any lock, so searches and writes go on meanwhile.
    pub fn merge_pending(
        &self,
        busy: &rayon::ThreadPool,
        idle: &rayon::ThreadPool,
    ) -> Result<bool, ApiError> {
        let handles: Vec<Arc<Handle>> = lock(&self.open).values().cloned().collect();
        for handle in handles {
            let snapshot = handle.snapshot();
            let quiet = lock(&handle.last_write).elapsed() >= IDLE_MERGE_AFTER;
            let (plan, pool) = match snapshot.plan_merge(false) {
                Some(plan) => (plan, if quiet { idle } else { busy }),
                None if quiet => match snapshot.plan_merge(true) {
                    Some(plan) => (plan, idle),
                    None => continue,
                },
                None => continue,
            };
            let segments = plan.segments();
            let started = Instant::now();
            let built = pool.install(|| snapshot.build_merge(plan))?;
            let vectors = built.vectors();
            let applied = handle.commit(|collection| collection.apply_merge(built))?;
            // The merged segments are gone once no search holds them: give their memory back
            // rather than keep it in the allocator's free lists.
            drop(snapshot);
            cloze_mlm::allocator::return_freed_memory();
            tracing::info!(
                collection = handle.name,
                segments,
                vectors,
                applied,
                seconds = started.elapsed().as_secs_f64(),
                "merged vector segments"
            );
            return Ok(true);
        }
        Ok(false)
    }

    /// Snapshots a collection between two writes; searches go on meanwhile.
    pub fn snapshot(&self, name: &str) -> Result<SnapshotInfo, ApiError> {
        let handle = self.get(name)?;
        let _writing = lock(&handle.writing);
        Ok(self.data_dir.snapshot(name)?)
    }

    /// Loads the snapshot named `snapshot` as collection `name` (replacing it if `replace`),
    /// after any write in progress; searches that started before finish on the old state.
    pub fn restore(
        &self,
        name: &str,
        snapshot: &str,
        replace: bool,
    ) -> Result<Arc<Collection>, ApiError> {
        let path = self.data_dir.snapshot_path(snapshot).map_err(|error| {
            ApiError::invalid(
                format!("snapshot: {error}").replace("collection name", "snapshot name"),
            )
        })?;
        if !path.is_dir() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "snapshot_not_found",
                format!("no snapshot named \"{snapshot}\" (GET /snapshots lists them)"),
            ));
        }
        let existing = lock(&self.open).get(name).cloned();
        let _writing = existing.as_ref().map(|handle| lock(&handle.writing));
        let handle = Arc::new(Handle::new(name, self.data_dir.restore(name, &path, replace)?));
        let restored = handle.snapshot();
        lock(&self.open).insert(name.to_string(), handle);
        Ok(restored)
    }
}

impl Handle {
    fn new(name: &str, collection: Collection) -> Handle {
        Handle {
            name: name.to_string(),
            current: RwLock::new(Arc::new(collection)),
            writing: Mutex::new(()),
            last_write: Mutex::new(Instant::now()),
        }
    }

    /// The committed state to read.
    pub fn snapshot(&self) -> Arc<Collection> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Runs a write on a clone of the collection and, once it has committed, makes that clone
    /// what searches read. A write that fails has committed nothing (the index crate's writes
    /// are all or nothing), so the snapshot stays.
    pub fn write<T>(
        &self,
        write: impl FnOnce(&mut Collection) -> Result<T, IndexError>,
    ) -> Result<T, ApiError> {
        let result = self.commit(write)?;
        *lock(&self.last_write) = Instant::now();
        Ok(result)
    }

    /// [`Self::write`], without counting as a write for [`IDLE_MERGE_AFTER`].
    fn commit<T>(
        &self,
        write: impl FnOnce(&mut Collection) -> Result<T, IndexError>,
    ) -> Result<T, ApiError> {
        let _writing = lock(&self.writing);
        let mut fresh = Collection::clone(&self.snapshot());
        let result = write(&mut fresh)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        Ok(result)
    }
}
