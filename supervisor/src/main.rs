//! The `postmaster` binary: a thin shell over the library (see lib.rs).

use clap::Parser;

// glibc's malloc (mallopt(3)): `M_MMAP_THRESHOLD` from <malloc.h>.
const M_MMAP_THRESHOLD: std::ffi::c_int = -3;

unsafe extern "C" {
    fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
}

/// Keeps glibc's mmap threshold at its default of 128 KiB instead of letting it
/// rise: by default each large block freed raises it to that block's size, so the
/// later large vectors of an apply (the alias table, the sender owners) come from
/// the heap, where growing one copies it and what is freed is not given back. Fixed,
/// every large block is mapped on its own, grown in place and returned when freed:
/// an edit of 100,000 aliases peaks at 17.3 instead of 19.2 MiB (./bench scale).
fn fix_mmap_threshold() {
    // SAFETY: mallopt only sets a tunable of the allocator; called first thing in
    // main, before any other thread exists. musl has it too (it does nothing there).
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn main() -> std::process::ExitCode {
    fix_mmap_threshold();
    let cli = postmaster::cli::Cli::parse();
    let code = postmaster::cli::run(cli);
    std::process::ExitCode::from(code as u8)
}
