//! Process-wide memory allocator settings for running the model on the CPU.
//!
//! Every tensor operation allocates its result. With glibc's defaults, blocks above a moving
//! threshold are fresh memory maps and freed heap tops are returned to the system, so the
//! kernel zeroes the same pages again for every batch: profiling `cloze embed` showed half the
//! time in the kernel's `clear_page`. Keeping every block on the heap and never trimming it
//! makes a batch reuse the memory of the one before. Raising the map threshold is not enough:
//! glibc caps it at 32 MiB, and a contrastive batch of 256 crops of 64 tokens, 512 wide, has
//! 32 MiB activations (1 billion page faults and 40% of the time in the kernel for a 40-minute
//! `retrieval` run), so memory maps are turned off altogether.

/// Keeps freed memory for reuse instead of returning it to the system. Call it once, early, in
/// a program (not a library) that runs the model; the resident size then stays at its peak.
/// Does nothing where the C library is not glibc.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Returns the free memory at the top and in the middle of the heap to the system: after a
/// large piece of work that freed many small blocks (building or loading an HNSW graph of a
/// million points, whose links are small allocations), which would otherwise stay resident.
/// Does nothing where the C library is not glibc.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
