//! Lynx's kernel programs. Each hook lives in its own module; the maps they share are in
//! [`maps`], with names and value types from `lynx-common`.
//!
//! The crate is built for the `bpfel-unknown-none` target by `cargo xtask build`. On the host
//! (`cargo check`/`cargo clippy --workspace`) it is an ordinary program with an empty `main`,
//! so that the programs are checked and linted with the rest of the workspace.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Compare-and-swap, which the eBPF target's `core::sync::atomic` lacks (see `http`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "the one intrinsic compare-and-swap needs")
)]

mod bio_queue;
mod cpu_clock;
mod cpu_time;
mod http;
mod maps;
mod net;
mod nginx_fork;
mod sched_switch;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; there is nothing to unwind to.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
