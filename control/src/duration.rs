//! The one duration grammar of the control plane: its flags (`--lifetime 24h`), the registry
//! and the Kubernetes resources it reads (`timeout: 1.5s`, Go's `time.ParseDuration` style, as
//! Linkerd and the Gateway API write them) and the injector's annotations.
//!
//! ```text
//! duration  = "0" | component { component }
//! component = number unit             number = digits [ "." digits ] | "." digits
//! unit      = "ns" | "us" | "µs" | "ms" | "s" | "m" | "h" | "d"
//! ```
//!
//! `100ms`, `10s`, `5m`, `1h`, `365d`, `1h30m`, `1.5s`, `250us`, `0`. A bare number other than
//! `0` is refused: the proxy reads it as milliseconds and a person often means seconds, so the
//! control plane asks for the unit. No sign, no exponent, no spaces inside; a sum beyond
//! `u64::MAX` seconds is an error, never a panic. Precision is the nanosecond (extra fraction
//! digits are dropped).

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration in the grammar above.
pub fn parse(s: &str) -> Result<Duration, String> {
    let bad = || {
        // Echo at most a line of hostile input.
        let shown: String = s.chars().take(40).collect();
        let more = if s.chars().nth(40).is_some() {
            "…"
        } else {
            ""
        };
        format!("{shown:?}{more} is not a duration (e.g. 100ms, 10s, 5m, 1h, 365d, 1h30m)")
    };
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos = component(num, unit_nanos(unit).ok_or_else(bad)?).ok_or_else(bad)?;
        total = total.checked_add(nanos).ok_or_else(bad)?;
        rest = after;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| bad())?;
    // The remainder is below 10^9, so it fits.
    let nanos = u32::try_from(total % NANOS_PER_SEC).map_err(|_| bad())?;
    Ok(Duration::new(secs, nanos))
}

/// The shortest exact spelling of `d` in the grammar (`90s` → `90s`, `120s` → `2m`).
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0".into();
    }
    for unit in ["d", "h", "m", "s", "ms", "us"] {
        let per = unit_nanos(unit).unwrap_or(1);
        if nanos.is_multiple_of(per) {
            return format!("{}{unit}", nanos / per);
        }
    }
    format!("{nanos}ns")
}

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        "d" => 86_400 * NANOS_PER_SEC,
        _ => return None,
    })
}

/// `num` (digits, optionally with one `.` and a fraction) times `per` nanoseconds.
fn component(num: &str, per: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut nanos = whole.checked_mul(per)?;
    // 20 fraction digits are below a nanosecond for every unit, and keep the product in range.
    let frac = &frac[..frac.len().min(20)];
    if !frac.is_empty() {
        let digits: u128 = frac.parse().ok()?;
        let scale = 10u128.pow(u32::try_from(frac.len()).ok()?);
        nanos = nanos.checked_add(digits * per / scale)?;
    }
    Some(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar() {
        let ok = [
            ("100ms", Duration::from_millis(100)),
            ("10s", Duration::from_secs(10)),
            ("20s", Duration::from_secs(20)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("24h", Duration::from_secs(86400)),
            ("90d", Duration::from_secs(90 * 86400)),
            ("365d", Duration::from_secs(365 * 86400)),
            ("1h30m", Duration::from_secs(5400)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            // Fractions on any unit, as Go's `time.ParseDuration` (identity's old parser
            // refused them).
            ("1.5h", Duration::from_secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            (" 30s ", Duration::from_secs(30)),
            ("0.1s", Duration::from_millis(100)),
            ("1.0000000001s", Duration::new(1, 0)),
        ];
        for (s, d) in ok {
            assert_eq!(parse(s), Ok(d), "{s}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "", " ", "10", "5", "h", "s", "5x", "10x", "-5s", "-1s", "+1s", "1e3s", "1.2.3s", ".s",
            "1 s", "1s 2s", "1hh", "1sm", "s1", "1..5s", "0x10s", "NaNs", "infs", "١s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        // Overflow of one component, of the sum, and of the seconds.
        for bad in [
            "340282366920938463463374607431768211456s".to_string(),
            "99999999999999999999999999999999999999d".to_string(),
            "213503982334602d".to_string(),
            "18446744073709551616s".to_string(),
            "9223372036854775807s9223372036854775807s9223372036854775807s".to_string(),
            "1s".repeat(100_000) + "x",
            "9".repeat(10_000) + "s",
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(
                e.len() < 200,
                "the error echoes all of the input: {}",
                e.len()
            );
        }
        // Many digits of fraction: truncated, not an error.
        let long = format!("1.{}s", "9".repeat(10_000));
        assert_eq!(parse(&long), Ok(Duration::new(1, 999_999_999)));
        // The largest duration there is.
        assert_eq!(
            parse("18446744073709551615s"),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn format_round_trips() {
        for (d, s) in [
            (Duration::ZERO, "0"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(86400), "1d"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_nanos(7), "7ns"),
        ] {
            assert_eq!(format(d), s);
            assert_eq!(parse(s), Ok(d));
        }
    }
}
