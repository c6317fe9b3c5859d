//! `lynx top --once`, and `lynx top` into a pipe: one plain table for scripts. Every cell is
//! one word (units carry no space, addresses are joined with commas), so a line splits on
//! whitespace.
use std::io::{self, Write};

use super::app::Column;
use crate::model::Snapshot;

/// Columns are this many spaces apart.
const GAP: usize = 2;

/// Writes the header line and one line per container, `host` last, in the snapshot's order.
pub fn write_table(out: &mut impl Write, snapshot: &Snapshot) -> io::Result<()> {
    let cells: Vec<Vec<String>> = snapshot
        .containers
        .iter()
        .map(|container| Column::ALL.map(|column| column.cell(container)).to_vec())
        .collect();
    let widths: Vec<usize> = Column::ALL
        .iter()
        .enumerate()
        .map(|(i, column)| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain([column.title().len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let header = Column::ALL.map(|column| column.title().to_owned());
    for row in std::iter::once(header.as_slice()).chain(cells.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, (column, text)) in Column::ALL.iter().zip(row).enumerate() {
            if i > 0 {
                line.push_str(&" ".repeat(GAP));
            }
            let width = widths[i];
            if column.is_numeric() {
                line.push_str(&format!("{text:>width$}"));
            } else {
                line.push_str(&format!("{text:<width$}"));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::tests::fixture;

    #[test]
    fn once_table_has_a_header_and_a_line_per_container_with_host_last() {
        let mut snapshot = fixture(
            "2026-11-22T04:22:02Z",
            &[("web1", 76.7, 1_064_960), ("web2", 0.0, 868_352)],
        );
        snapshot.containers[1].ipv4 = vec!["10.177.42.184".into(), "10.0.0.9".into()];
        snapshot.containers[2].block_io.write_bytes_per_s = 65_474.45;
        snapshot.containers[0].disk = Some(
            [(
                "root".to_owned(),
                crate::model::Disk {
                    used_bytes: Some(20 << 20),
                    ..Default::default()
                },
            )]
            .into(),
        );
        let mut out = Vec::new();
        write_table(&mut out, &snapshot).expect("write to a Vec");
        let text = String::from_utf8(out).expect("UTF-8");
        let expected = "\
NAME  STATUS   IPV4                     CPU%      MEM     DISK  READ/S    WRITE/S  RX/S  TX/S  PROCS
web1  Running  10.177.42.10            76.7%  1.02MiB  20.0MiB    0B/s       0B/s  0B/s  0B/s      4
web2  Running  10.177.42.184,10.0.0.9   0.0%   848KiB        -    0B/s       0B/s  0B/s  0B/s      4
host  Running  -                        2.4%        -        -    0B/s  63.9KiB/s     -     -      -
";
        assert_eq!(text, expected, "got:\n{text}");
        for line in text.lines().skip(1) {
            assert_eq!(line.split_whitespace().count(), Column::ALL.len(), "{line}");
        }
    }
}
