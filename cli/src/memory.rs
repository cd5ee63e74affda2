//! Process-wide allocator settings, made before any thread starts.

/// Caps glibc's malloc arenas at one per two cores (at most 8). By default glibc keeps up to
/// eight arenas per core, and a pull's 16 ingest threads each hold freed chunk buffers in
/// their own: the server's peak RSS of a first pull of a 676 MB Debian tree was 192–198 MiB
/// against a heap peak of 65 MiB. With one arena on a 2-core machine it was 117–131 MiB, at
/// the same speed; local backups and restores did not change (measured with
/// `MALLOC_ARENA_MAX`, which sets the same limit).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn cap_malloc_arenas() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = (cores / 2).clamp(1, 8) as libc::c_int;
    // SAFETY: mallopt only sets a tunable of glibc's allocator; it is called first thing in
    // main, before any other thread exists, and a refusal (return 0) leaves the default.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// Elsewhere the allocator's defaults stand.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn cap_malloc_arenas() {}
