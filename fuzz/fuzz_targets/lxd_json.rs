//! LXD's JSON for instances (NICs, addresses), an instance's state, and networks.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| lynx::fuzz::lxd_json(bytes));
