//! Embeds the kernel object that `cargo xtask build` compiled from `lynx-ebpf`.
//!
//! The eBPF build runs in xtask rather than here through aya-build: aya-build drives
//! `cargo +<toolchain>` through rustup, which cannot express the compiler override that
//! Debian hosts need (`RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1` with Debian's library source,
//! because rustup's toolchains lack `rust-src` there). xtask picks the toolchain, builds the
//! object and passes its path in `LYNX_EBPF_OBJECT`.
use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    println!("cargo:rerun-if-env-changed=LYNX_EBPF_OBJECT");
    let Some(object) = env::var_os("LYNX_EBPF_OBJECT") else {
        eprintln!(
            "error: LYNX_EBPF_OBJECT is not set: build lynx with `cargo xtask build`, which \
             compiles the eBPF programs first"
        );
        return ExitCode::FAILURE;
    };
    let object = PathBuf::from(object);
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("lynx.bpf.o");
    if let Err(error) = fs::copy(&object, &out) {
        eprintln!(
            "error: cannot copy eBPF object {}: {error}",
            object.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
