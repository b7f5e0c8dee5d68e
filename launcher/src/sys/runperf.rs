//! The launcher's own memory footprint while it supervises a VM (docs/run.md, "Memory").
//!
//! glibc's malloc gives every thread that allocates its own arena (up to 8 per core), and keeps
//! freed pages of each: the start-up (plumbing, render, disk preparation on blocking threads)
//! leaves a few hundred KiB behind that the steady state never needs again.

/// One malloc arena for the whole process (call first thing, before threads start).
pub fn limit_arenas() {
    // SAFETY: mallopt only changes glibc's allocator tunables; M_ARENA_MAX with a positive value
    // is a documented parameter, safe to set at any time (it caps arenas created from now on).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns freed heap pages to the kernel (call once the VM runs, after the start-up's
/// allocations are gone).
pub fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers; it only releases free memory at the top of the
    // heap and whole free pages inside the arenas, and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
