//! LXD's event stream past the websocket upgrade: frames, fragments, pings, the JSON of events.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| lynx::fuzz::lxd_events(bytes));
