//! The sched_switch/cpu-clock programs' CPU time per cgroup against the kernel's own cgroup
//! accounting.
use std::{process::Command, thread::sleep, time::Duration};

use lynx_tests::{
    TestCgroup, assert_close, daemon::DaemonUnderTest, entry, private_kernel_counters, privileged,
};

/// How long the CPU-bound child runs.
const BUSY_FOR: Duration = Duration::from_millis(2500);

#[test]
fn busy_cgroup_cpu_time_matches_kernel_accounting() {
    if !privileged("busy_cgroup_cpu_time_matches_kernel_accounting") {
        return;
    }
    let mut kernel = private_kernel_counters();
    let cgroup = TestCgroup::create("busy");
    let mut busy = cgroup.spawn(Command::new("sh").args(["-c", "while :; do :; done"]));
    sleep(BUSY_FOR);
    busy.kill();
    // The killed task's last slice is charged at its final switch; let that land.
    sleep(Duration::from_millis(200));

    let lynx_ns = kernel.cgroup_cpu_ns().expect("read CPU map")[&cgroup.id()];
    let kernel_ns = cgroup.v2_usage_ns();
    // On a loaded machine the child gets less than a CPU; the comparison is what matters, as
    // long as it ran enough to compare.
    assert!(
        kernel_ns > 200_000_000,
        "the child ran only {kernel_ns} ns in {BUSY_FOR:?}"
    );
    assert_close(lynx_ns, kernel_ns, 0.03, "cgroup v2 cpu.stat usage_usec");
    match cgroup.cpuacct_usage_ns() {
        Some(v1_ns) => assert_close(lynx_ns, v1_ns, 0.03, "cgroup v1 cpuacct.usage"),
        None => eprintln!("pure cgroup v2 host: no cpuacct hierarchy to compare with"),
    }
}

#[test]
fn sleeping_cgroup_is_charged_under_one_percent_of_a_cpu() {
    if !privileged("sleeping_cgroup_is_charged_under_one_percent_of_a_cpu") {
        return;
    }
    let mut kernel = private_kernel_counters();
    let cgroup = TestCgroup::create("sleepy");
    let asleep_for = Duration::from_secs(2);
    let mut sleeper = cgroup.spawn(Command::new("sleep").arg(asleep_for.as_secs().to_string()));
    sleeper.0.wait().expect("sleep exits");
    sleep(Duration::from_millis(100));

    let lynx_ns = kernel
        .cgroup_cpu_ns()
        .expect("read CPU map")
        .get(&cgroup.id())
        .copied()
        .unwrap_or(0);
    let share = lynx_ns as f64 / asleep_for.as_nanos() as f64;
    assert!(
        share < 0.01,
        "a sleeping child was charged {lynx_ns} ns: {:.2}% of a CPU",
        share * 100.0
    );
    // The kernel agrees the child barely ran, so lynx is not missing time either.
    assert!(cgroup.v2_usage_ns() < asleep_for.as_nanos() as u64 / 100);
}

/// Every CPU moves the time it holds for a cgroup into the map at its clock sample, and the
/// samples of all CPUs fire together. The first such move for a new cgroup inserts its entry;
/// the CPU that lost that race used to drop what it held. Fresh cgroups, each with a task on
/// every CPU that computes and sleeps in turn (so that every CPU holds the cgroup's time when
/// it goes idle), must be counted whole, with no drop.
#[test]
fn new_cgroups_busy_on_every_cpu_at_once_lose_no_time() {
    if !privileged("new_cgroups_busy_on_every_cpu_at_once_lose_no_time") {
        return;
    }
    const ROUNDS: usize = 12;
    const WORK_THEN_SLEEP: &str = "for i in 1 2 3 4 5 6 7 8; do j=0; \
        while [ $j -lt 3000 ]; do j=$((j+1)); done; sleep 0.02; done";
    let mut kernel = private_kernel_counters();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cgroups: Vec<TestCgroup> = (0..ROUNDS)
        .map(|round| {
            let cgroup = TestCgroup::create(&format!("fresh{round}"));
            let mut tasks: Vec<_> = (0..cpus)
                .map(|cpu| {
                    let cpu = cpu.to_string();
                    let mut command = Command::new("taskset");
                    command.args(["-c", &cpu, "sh", "-c", WORK_THEN_SLEEP]);
                    cgroup.spawn(&mut command)
                })
                .collect();
            for task in &mut tasks {
                assert!(task.0.wait().expect("the task ends").success());
            }
            cgroup
        })
        .collect();
    sleep(Duration::from_millis(200));
    let lynx = kernel.cgroup_cpu_ns().expect("read CPU map");
    let (lynx_ns, kernel_ns) = cgroups.iter().fold((0, 0), |(l, k), cgroup| {
        (
            l + lynx.get(&cgroup.id()).copied().unwrap_or(0),
            k + cgroup.v2_usage_ns(),
        )
    });
    eprintln!("fresh cgroups: lynx {lynx_ns} ns, cpu.stat {kernel_ns} ns");
    assert_eq!(
        kernel
            .sample()
            .expect("read the maps")
            .drops
            .cgroup_cpu_map_full,
        0,
        "no CPU time dropped"
    );
    assert_close(
        lynx_ns,
        kernel_ns,
        0.03,
        "fresh cgroups' cpu.stat usage_usec",
    );
}

/// A container's inner cgroups come and go (systemd's scopes, a cron job's); the time they
/// used stays the container's, as it does in the kernel's own accounting of the container.
#[test]
fn time_of_a_removed_inner_cgroup_stays_with_its_container() {
    if !privileged("time_of_a_removed_inner_cgroup_stays_with_its_container") {
        return;
    }
    let name = format!("lynx-inner-{}", std::process::id());
    let container = TestCgroup::at_root(&format!("lxc.payload.{name}"));
    // An init that keeps the container listed.
    let _init = container.spawn(Command::new("sleep").arg("120"));
    let daemon = DaemonUnderTest::start("inner-cgroup", "200ms");
    daemon.wait_for("the container", Duration::from_secs(30), |s| {
        s.containers.iter().any(|c| c.name == name)
    });
    let before = daemon.next_snapshot();
    let kernel_before = container.v2_usage_ns();
    {
        // Busy for several of the daemon's samples, so that it sees the cgroup alive, then
        // removed when it goes out of scope.
        let job = TestCgroup::at_root(&format!("lxc.payload.{name}/job"));
        let mut busy =
            job.spawn(Command::new("timeout").args(["1.5", "sh", "-c", "while :; do :; done"]));
        busy.0.wait().expect("the busy loop ends");
    }
    let after = daemon.next_snapshot();
    let kernel_ns = container.v2_usage_ns() - kernel_before;
    assert!(kernel_ns > 300_000_000, "the job ran only {kernel_ns} ns");
    assert_close(
        entry(&after, &name)
            .cpu
            .ns
            .saturating_sub(entry(&before, &name).cpu.ns),
        kernel_ns,
        0.03,
        "the container's CPU time, its removed job's included, vs its cpu.stat usage_usec",
    );
}
