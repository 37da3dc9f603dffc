//! Links `libshardalloc.so` without `libgcc_s.so.1`.
//!
//! Rust's standard library asks for `-lgcc_s` (its unwinder, used by panics
//! and backtraces), so a Rust `cdylib` NEEDs `libgcc_s.so.1`: a C program
//! preloading the allocator maps and relocates one more library (~100 KiB
//! resident, and the dynamic linker's symbol lookups), which a C allocator
//! does not. The library never unwinds across its C ABI (a panic there
//! aborts), so the unwinder only serves a backtrace on the way to an abort.
//!
//! On a GNU target built on its own host, with gcc's static unwinder
//! `libgcc_eh.a` at hand, this script puts a one-line linker script named
//! `libgcc_s.so` first on the library search path: `-lgcc_s` then links
//! the unwinder from `libgcc_eh.a` into the library itself, where it stays
//! hidden (the library exports only its C functions), so it never stands in
//! for the program's own unwinder. Anywhere else nothing changes.
//!
//! # Text layout of `libshardalloc.so`
//!
//! The kernel maps a file's code in 64 KiB blocks around each page that
//! runs (fault-around), so a program's resident memory counts every block
//! of the library that holds one function it ran. In rustc's own layout the
//! allocator's code sits among ~230 KiB of Rust standard library code that
//! a C program never runs (std's panic-time backtrace printer: gimli,
//! addr2line, rustc_demangle, miniz_oxide), with the `.init` stub at the
//! start of the code and the PLT (`__tls_get_addr`, called by every
//! `malloc`) at its end: a small program had ~300 KiB of the library's
//! 352 KiB of code resident. On the same targets this script adds a
//! linker script (`INSERT` commands only: the linker's default layout with
//! three output sections moved) to the `cdylib`'s link: the allocator's
//! code and the one std function that runs at load (std's `argv`
//! constructor) are gathered between `.init` and the PLT, and the cold
//! code, std and the unwinder and the allocator's reports, is put before
//! `.init`. Nothing is removed and no symbol changes; the static library is
//! not affected. `SHARDALLOC_CAPI_TEXT_LAYOUT=0` at build time turns it
//! off; so does a `-fuse-ld=` or `linker-flavor` in `RUSTFLAGS` (a linker
//! without `INSERT`: gold, mold).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The linker script of the text layout (see the module documentation).
/// Linkers match an input section against the `SECTIONS` commands in the
/// order they are written, whatever their `INSERT` places them; so the
/// allocator's cold functions are claimed first (by name: module paths
/// appear in legacy and v0 mangled names alike), then the hot ones, then
/// whatever is left of the Rust sysroot. Input files are matched by path:
/// the allocator's objects and rlibs are named after its crates
/// (`shardalloc`), the standard library's live under `lib/rustlib/`.
const TEXT_LAYOUT: &str = "\
/* libshardalloc.so text layout: see capi/build.rs. */
SECTIONS {
  .text.shardalloc.cold : {
    *(.text.*10shardalloc6report* .text.*10shardalloc11first_class*)
    *(.text.*10shardalloc12purge_thread* .text.*10shardalloc5fatal*)
    *(.text.malloc_stats .text.malloc_info .text.shardalloc_heap_*)
    *libgcc_eh.a:*(.text .text.*)
  }
} INSERT BEFORE .init;
SECTIONS {
  .text.shardalloc : {
    *(.text.*ARGV_INIT_ARRAY*)
    *shardalloc*(.text .text.*)
  }
} INSERT BEFORE .text;
SECTIONS {
  .text.rustlib : { *rustlib*(.text .text.*) }
} INSERT BEFORE .init;
";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-env-changed=SHARDALLOC_CAPI_TEXT_LAYOUT");
    let native = env::var("TARGET").ok() == env::var("HOST").ok();
    let gnu_linux = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !(native && gnu_linux) {
        return;
    }
    let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    text_layout(&out);
    static_unwinder(&out);
}

/// Adds the text layout's linker script to the `cdylib`'s link, unless
/// turned off or another linker is asked for.
fn text_layout(out: &Path) {
    if env::var("SHARDALLOC_CAPI_TEXT_LAYOUT").as_deref() == Ok("0") {
        return;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("fuse-ld=") || flags.contains("linker-flavor") {
        return;
    }
    let script = out.join("text-layout.ld");
    if fs::write(&script, TEXT_LAYOUT).is_ok() {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{}", script.display());
    }
}

/// Links the unwinder from `libgcc_eh.a` in place of `libgcc_s.so.1`.
fn static_unwinder(out: &Path) {
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let Ok(found) = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    // `-print-file-name` echoes the bare name when it finds nothing.
    let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    if !found.status.success() || !Path::new(&path).is_absolute() || !Path::new(&path).is_file() {
        return;
    }
    if fs::write(out.join("libgcc_s.so"), format!("INPUT({path})\n")).is_ok() {
        println!("cargo:rustc-link-search=native={}", out.display());
    }
}
