//! A config file (TOML): every key, and the checks after parsing.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| lynx::fuzz::config(bytes));
