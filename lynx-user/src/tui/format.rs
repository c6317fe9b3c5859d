//! Human units for the live view and the `--once` table. Units carry no space before them
//! (`1.5MiB`, `12.0KiB/s`) so that a script can split a `--once` line on whitespace.
use std::time::{Duration, SystemTime};

const BINARY_UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/// Bytes in binary units: `512B`, `1.50KiB`, `12.3MiB`, `512GiB`; at most 8 characters.
pub fn bytes(count: u64) -> String {
    if count < 1024 {
        return format!("{count}B");
    }
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < BINARY_UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    // Rounding up to the next unit would print `1024KiB`; fewer decimals keep the width.
    let text = if value < 9.995 {
        format!("{value:.2}")
    } else if value < 99.95 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    };
    format!("{text}{}", BINARY_UNITS[unit])
}

/// A host memory figure, which the snapshot gives in MiB.
pub fn mebibytes(count: u64) -> String {
    bytes(count.saturating_mul(1024 * 1024))
}

/// Bytes per second: `0B/s`, `64.0KiB/s`. Negative or not-a-number rates (never written by
/// the daemon, but the file is input) read as 0.
pub fn rate(bytes_per_s: f64) -> String {
    let whole = if bytes_per_s.is_finite() && bytes_per_s > 0.0 {
        bytes_per_s.round() as u64
    } else {
        0
    };
    format!("{}/s", bytes(whole))
}

/// A percentage with one decimal: `76.7%`; `-` when not a number.
pub fn percent(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.1}%")
    } else {
        "-".to_owned()
    }
}

/// A span of whole seconds, two units at most: `42s`, `3m05s`, `2h03m`, `4d03h`.
pub fn duration_s(seconds: u64) -> String {
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

/// How old something is: tenths of a second under a minute (`0.2s`, `12.5s`), then as
/// [`duration_s`].
pub fn age(elapsed: Duration) -> String {
    if elapsed < Duration::from_secs(60) {
        format!("{:.1}s", elapsed.as_secs_f64())
    } else {
        duration_s(elapsed.as_secs())
    }
}

/// An interval given in milliseconds: `200ms`, `1s`, `1.5s`.
pub fn interval_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// Parses the snapshot's `host.timestamp`, RFC 3339 as the daemon writes it
/// (`2026-11-22T04:22:02.196581371Z`, or with a `+HH:MM` offset). Hand-rolled because the
/// `time` crate's parser is behind a feature lynx does not otherwise need.
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let (date, rest) = text.split_once(['T', 't', ' '])?;
    let mut date_parts = date.splitn(3, '-');
    let year: i32 = date_parts.next()?.parse().ok()?;
    let month: u8 = date_parts.next()?.parse().ok()?;
    let day: u8 = date_parts.next()?.parse().ok()?;

    let (clock, offset_s) = match rest.strip_suffix(['Z', 'z']) {
        Some(clock) => (clock, 0),
        None => {
            let at = rest.rfind(['+', '-'])?;
            let (clock, offset) = rest.split_at(at);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (hours, minutes) = offset.get(1..)?.split_once(':')?;
            let hours: i32 = hours.parse().ok()?;
            let minutes: i32 = minutes.parse().ok()?;
            (clock, sign * (hours * 3600 + minutes * 60))
        }
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut hms_parts = hms.splitn(3, ':');
    let hour: u8 = hms_parts.next()?.parse().ok()?;
    let minute: u8 = hms_parts.next()?.parse().ok()?;
    let second: u8 = hms_parts.next()?.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Nanoseconds: the first nine digits, right-padded with zeros.
    let nanos = format!("{:0<9.9}", fraction).parse().ok()?;

    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    let clock = time::Time::from_hms_nano(hour, minute, second, nanos).ok()?;
    let offset = time::UtcOffset::from_whole_seconds(offset_s).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, clock)
            .assume_offset(offset)
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units_and_keep_their_width() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1024), "1.00KiB");
        assert_eq!(bytes(1536), "1.50KiB");
        assert_eq!(bytes(12_900_000), "12.3MiB");
        assert_eq!(bytes(512 * 1024 * 1024), "512MiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1024KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.00GiB");
        assert_eq!(bytes(u64::MAX), "16384PiB");
        assert!(
            (0..64)
                .map(|shift| bytes((1u64 << shift) - 1))
                .all(|text| text.len() <= 8)
        );
    }

    #[test]
    fn host_memory_is_given_in_mebibytes() {
        assert_eq!(mebibytes(760), "760MiB");
        assert_eq!(mebibytes(24_105), "23.5GiB");
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert_eq!(rate(0.0), "0B/s");
        assert_eq!(rate(65_474.45), "63.9KiB/s");
        assert_eq!(rate(511.6), "512B/s");
        assert_eq!(rate(-5.0), "0B/s");
        assert_eq!(rate(f64::NAN), "0B/s");
    }

    #[test]
    fn percentages_have_one_decimal() {
        assert_eq!(percent(76.7), "76.7%");
        assert_eq!(percent(0.0), "0.0%");
        assert_eq!(percent(199.96), "200.0%");
        assert_eq!(percent(f64::NAN), "-");
    }

    #[test]
    fn durations_show_two_units() {
        assert_eq!(duration_s(5), "5s");
        assert_eq!(duration_s(185), "3m05s");
        assert_eq!(duration_s(7380), "2h03m");
        assert_eq!(duration_s(4 * 86_400 + 3 * 3600 + 59), "4d03h");
        assert_eq!(age(Duration::from_millis(250)), "0.2s");
        assert_eq!(age(Duration::from_secs(75)), "1m15s");
        assert_eq!(interval_ms(200), "200ms");
        assert_eq!(interval_ms(1000), "1s");
        assert_eq!(interval_ms(1500), "1.5s");
    }

    #[test]
    fn daemon_timestamps_parse() {
        let epoch = |text: &str| {
            parse_timestamp(text)
                .unwrap_or_else(|| panic!("{text} parses"))
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970")
        };
        assert_eq!(
            epoch("2026-11-18T11:06:40Z"),
            Duration::from_secs(1_795_000_000)
        );
        assert_eq!(
            epoch("2026-11-18T11:06:40.25Z"),
            Duration::from_millis(1_795_000_000_250)
        );
        assert_eq!(
            epoch("2026-11-18T11:06:40.000000001Z"),
            Duration::new(1_795_000_000, 1)
        );
        assert_eq!(
            epoch("2026-11-18T12:06:40+01:00"),
            Duration::from_secs(1_795_000_000)
        );
        assert_eq!(
            epoch("2026-11-18T10:36:40-00:30"),
            Duration::from_secs(1_795_000_000)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-11-18T25:00:00Z",
            "2026-11-18T11:06:40",
            "2026-11-18T11:06:40.x5Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
    }
}
