//! What procfs says about one process: its command name and parent, and its real user.
use std::{fs, path::Path};

/// The command name and parent pid of `/proc/PID/stat` text; the name is in parentheses
/// and may itself contain spaces and parentheses.
pub fn parse_stat(text: &str) -> Option<(&str, u32)> {
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

/// The real uid of the process whose procfs directory is `process` (`/proc/PID`).
pub fn real_uid(process: &Path) -> Option<u32> {
    let status = fs::read_to_string(process.join("status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_names_with_parentheses_and_spaces_are_read_whole() {
        assert_eq!(
            parse_stat("42 (bash (x) y) S 7 42 42 0 -1"),
            Some(("bash (x) y", 7))
        );
        assert_eq!(parse_stat("42 bash S 7"), None);
    }

    #[test]
    fn this_process_has_its_own_uid() {
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(real_uid(Path::new("/proc/self")), Some(uid));
        assert_eq!(real_uid(Path::new("/proc/no-such-process")), None);
    }
}
