//! An HTTP request, any bytes, to the daemon's HTTP server (hyper's parser, the Host check, the routes).
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| lynx::fuzz::http_request(bytes));
