//! nginx counted through its system calls (`[nginx] byte_hooks = "system_calls"`): the path
//! the daemon takes on kernels without the socket tracepoints (before 6.3), here on this
//! host's kernel, where it can be forced. The kernel matrix runs the same rig on 6.1, where
//! the daemon chooses it itself (`guest_kernel.rs`).
use lynx_tests::{netns::nginx_counts_exactly_over_namespaces, privileged};

#[test]
fn requests_counted_at_system_call_exit_equal_stub_status_and_each_backend() {
    if !privileged("requests_counted_at_system_call_exit_equal_stub_status_and_each_backend") {
        return;
    }
    // 10,000 with keep-alive and 10,000 with a connection each.
    nginx_counts_exactly_over_namespaces(
        "nginx-syscalls",
        "200ms",
        "byte_hooks = \"system_calls\"\n",
        10_000,
    );
}
