//! The trail's times: RFC 3339 UTC with milliseconds when written (`2026-11-27T17:02:40.123Z`),
//! any RFC 3339 offset when read back, and the "that long ago" forms readers filter by.
//!
//! Dates are converted with H. Hinnant's days-from-civil algorithms, so no calendar crate is
//! needed and every input maps to one instant or to none (never a panic).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Current time as RFC 3339 UTC with milliseconds, e.g. `2026-11-27T17:02:40.123Z`.
pub fn now_rfc3339() -> String {
    rfc3339_from_ms(now_ms())
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_from_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as Unix milliseconds; `None` if it is not one.
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| digits(s.get(from..to)?);
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let days_in_month = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in_month || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: the first three digits, padded.
        ms = format!("{:0<3}", &frac[..digits.min(3)]).parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (digits(rest.get(1..3)?)?, digits(rest.get(4..6)?)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    // Days-from-civil.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// A time given to a reader, as Unix milliseconds: RFC 3339, or a duration before `now_ms`
/// (`90s`, `15m`, `2h`, `7d`). The error says which forms are understood.
pub fn time_or_ago(s: &str, now_ms: i64) -> Result<i64, String> {
    let bad = || {
        format!(
            "{s:?} is neither an RFC 3339 time (2026-11-27T17:00:00Z) nor a duration ago (15m, 2h, 7d)"
        )
    };
    if let Some(t) = rfc3339_ms(s) {
        return Ok(t);
    }
    let Some((last, _)) = s.char_indices().last() else {
        return Err(bad());
    };
    let (count, unit) = s.split_at(last);
    let ms_per = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let count = digits(count).ok_or_else(bad)?;
    count
        .checked_mul(ms_per)
        .map(|ago| now_ms - ago)
        .ok_or_else(bad)
}

/// A run of ASCII digits as a number (no sign, no spaces).
fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_times() {
        assert_eq!(rfc3339_from_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_from_ms(1_709_210_096_789),
            "2024-02-29T12:34:56.789Z"
        );
    }

    #[test]
    fn read_times() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2024-02-29T12:34:56.789Z"),
            Some(1_709_210_096_789)
        );
        assert_eq!(
            rfc3339_ms("2024-02-29T14:34:56.7891+02:00"),
            Some(1_709_210_096_789)
        );
        assert_eq!(
            rfc3339_ms("2024-02-29T12:04:56.7-00:30"),
            Some(1_709_210_096_700)
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01",
            "+024-01-01T00:00:00Z",
            "2024-01-01T00:00:00é",
            "2024-01-01T00:00:00+é:00",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad}");
        }
        for ms in [0, 1_709_210_096_789, 4_102_444_799_999] {
            assert_eq!(rfc3339_ms(&rfc3339_from_ms(ms)), Some(ms));
        }
    }

    #[test]
    fn times_ago() {
        let now = 1_795_800_000_000;
        assert_eq!(time_or_ago("2h", now), Ok(now - 7_200_000));
        assert_eq!(time_or_ago("90s", now), Ok(now - 90_000));
        assert_eq!(time_or_ago("7d", now), Ok(now - 604_800_000));
        assert_eq!(
            time_or_ago("2026-11-27T17:00:00Z", now),
            Ok(1_795_798_800_000)
        );
        for bad in [
            "",
            "h",
            "2x",
            "-2h",
            "+2h",
            "yesterday",
            "é",
            "99999999999999999d",
        ] {
            assert!(time_or_ago(bad, now).is_err(), "{bad}");
        }
    }
}
