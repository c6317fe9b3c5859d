//! The layout of every value and key kept in a pinned map, against [`MAPS_LAYOUT_VERSION`]: a
//! daemon reuses pinned maps of the same version, so a layout change without a new version
//! would make it read another layout's bytes.
use core::mem::{offset_of, size_of};
use std::{format, string::String};

use super::*;
use crate::http::{Endpoint, EndpointCounters, HttpFlow, HttpFlowEntry};

/// `Type size: field@offset ...` for each listed type, one line each.
macro_rules! layout {
    ($($ty:ty { $($field:ident),* })*) => {{
        let mut text = String::new();
        $(
            text += &format!("{} {}:", stringify!($ty), size_of::<$ty>());
            $(text += &format!(" {}@{}", stringify!($field), offset_of!($ty, $field));)*
            text += "\n";
        )*
        text
    }};
}

#[test]
fn pinned_layouts_are_those_of_their_version() {
    let layout = layout! {
        CpuTime { on_cpu_ns }
        CpuSlice { task, task_runtime_ns, running_cgroup_id, running_ns, pending }
        CpuPending { cgroup_id, ns }
        NetCounters { rx_bytes, rx_packets, tx_bytes, tx_packets }
        IoCounters { read_bytes, read_ops, write_bytes, write_ops }
        HttpFlow { kind, state, flags, _pad, port, line_len, name_hash, _pad2, left, tail }
        HttpFlowEntry { cookie, flow, slot, _pad }
        Endpoint { kind, port, addr }
        EndpointCounters { opened, closed, requests, bad_requests, bytes_in, bytes_out, unparsed }
    };
    // On a change: raise MAPS_LAYOUT_VERSION, then paste the new layout here. (Version 5 kept
    // version 4's layout: flows became keyed by socket cookie instead of process and fd.
    // Version 6 too: containers' traffic moved to a pinned map of its own, CONTAINER_NET.)
    let expected = "\
CpuTime 8: on_cpu_ns@0
CpuSlice 160: task@0 task_runtime_ns@8 running_cgroup_id@16 running_ns@24 pending@32
CpuPending 16: cgroup_id@0 ns@8
NetCounters 32: rx_bytes@0 rx_packets@8 tx_bytes@16 tx_packets@24
IoCounters 32: read_bytes@0 read_ops@8 write_bytes@16 write_ops@24
HttpFlow 32: kind@0 state@1 flags@2 _pad@3 port@4 line_len@6 name_hash@8 _pad2@12 left@16 tail@24
HttpFlowEntry 48: cookie@0 flow@8 slot@40 _pad@44
Endpoint 24: kind@0 port@4 addr@8
EndpointCounters 56: opened@0 closed@8 requests@16 bad_requests@24 bytes_in@32 bytes_out@40 unparsed@48
";
    assert_eq!(
        (MAPS_LAYOUT_VERSION, layout.as_str()),
        (7, expected),
        "a pinned map's layout changed: raise MAPS_LAYOUT_VERSION"
    );
}
