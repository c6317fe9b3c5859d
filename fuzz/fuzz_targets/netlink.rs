//! One batch of a sock_diag netlink dump, as the kernel's list of TCP sockets.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| lynx::fuzz::netlink(bytes));
