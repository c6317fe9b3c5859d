//! Embeds the kernel object that `cargo xtask build` compiled from `lynx-ebpf`, and stamps the
//! version `lynx --version` prints: the crate version, the git revision it was built from and
//! the eBPF object's build id (so an operator can tell which kernel programs a binary carries).
//!
//! The eBPF build runs in xtask rather than here through aya-build: aya-build drives
//! `cargo +<toolchain>` through rustup, which cannot express the compiler override that
//! Debian hosts need (`RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1` with Debian's library source,
//! because rustup's toolchains lack `rust-src` there). xtask picks the toolchain, builds the
//! object and passes its path in `LYNX_EBPF_OBJECT`. Without it (`cargo check`, clippy,
//! rust-analyzer on a plain checkout) an empty object is embedded, and such a binary refuses
//! to load programs, saying how to build it.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use sha2::{Digest, Sha256};

fn main() -> ExitCode {
    println!("cargo:rerun-if-env-changed=LYNX_EBPF_OBJECT");
    let bytes = match env::var_os("LYNX_EBPF_OBJECT").map(PathBuf::from) {
        None => {
            println!(
                "cargo:warning=LYNX_EBPF_OBJECT is not set: this build embeds no eBPF programs \
                 (`cargo xtask build` compiles them first)"
            );
            Vec::new()
        }
        Some(object) => {
            println!("cargo:rerun-if-changed={}", object.display());
            match fs::read(&object) {
                Ok(bytes) => bytes,
                Err(error) => {
                    eprintln!(
                        "error: cannot read eBPF object {}: {error}",
                        object.display()
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("lynx.bpf.o");
    if let Err(error) = fs::write(&out, &bytes) {
        eprintln!("error: cannot write {}: {error}", out.display());
        return ExitCode::FAILURE;
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!(
        "cargo:rustc-env=LYNX_VERSION={} (git {}, eBPF build id {})",
        env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION"),
        git_revision(&manifest_dir),
        build_id(&bytes),
    );
    ExitCode::SUCCESS
}

/// The eBPF object's build id: the first 20 bytes of its SHA-256, in hex (the length of a GNU
/// build id). bpf-linker writes no build-id note, and a content hash names the exact
/// programs whatever built them: `sha256sum` of the object starts with it. `none` for a build
/// without programs.
fn build_id(object: &[u8]) -> String {
    if object.is_empty() {
        return "none".into();
    }
    Sha256::digest(object)[..20]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The commit `dir` is checked out at (12 hex digits), `LYNX_GIT_REVISION` when building
/// outside a git checkout (a source tarball), or "unknown".
fn git_revision(dir: &Path) -> String {
    println!("cargo:rerun-if-env-changed=LYNX_GIT_REVISION");
    if let Ok(revision) = env::var("LYNX_GIT_REVISION") {
        return revision;
    }
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let Some(revision) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    // Stamp again when HEAD moves: a checkout changes HEAD, a commit the branch's ref (loose,
    // or in packed-refs). `--git-path` resolves each in a linked worktree too.
    let branch = git(&["symbolic-ref", "--quiet", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        // A path that does not exist would make cargo run this script at every build.
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", name])
            && Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    revision
}
