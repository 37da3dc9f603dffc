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

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let native = env::var("TARGET").ok() == env::var("HOST").ok();
    let gnu_linux = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !(native && gnu_linux) {
        return;
    }
    let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
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
