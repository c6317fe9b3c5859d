//! An answer on LXD's socket: status line, headers, and a body framed by length, chunks or the end.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| lynx::fuzz::lxd_response(bytes));
