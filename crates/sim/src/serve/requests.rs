//! LLM request traces: the Azure LLM inference trace 2023 (CSV: `TIMESTAMP,ContextTokens,GeneratedTokens`)
//! and the Mooncake FAST'25 traces (JSON lines: `timestamp` in ms, `input_length`, `output_length`).
//! Both become arrivals in seconds from the first request, with token counts.

use std::io::{BufRead, BufReader, Read};

use serde::Deserialize;

use super::ServeError;

/// One request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlmRequest {
    /// Arrival, seconds from the trace's first request.
    pub at_s: f64,
    /// Prompt tokens (prefill).
    pub context_tokens: u32,
    /// Output tokens (decode).
    pub generated_tokens: u32,
}

fn bad(source: &str, line: usize, what: impl std::fmt::Display) -> ServeError {
    ServeError::Trace(format!("{source}:{line}: {what}"))
}

/// Reads the Azure LLM inference trace (2023 or 2024 schema).
pub fn read_azure(source: &str, input: impl Read) -> Result<Vec<LlmRequest>, ServeError> {
    let mut out = Vec::new();
    let mut first: Option<f64> = None;
    for (i, line) in BufReader::new(input).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| bad(source, n, e))?;
        if n == 1 {
            if line.trim() != "TIMESTAMP,ContextTokens,GeneratedTokens" {
                return Err(bad(source, n, "expected the header TIMESTAMP,ContextTokens,GeneratedTokens"));
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split(',');
        let (Some(ts), Some(ctx), Some(out_tokens), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(source, n, "expected three fields: TIMESTAMP,ContextTokens,GeneratedTokens"));
        };
        let t = parse_timestamp(ts.trim())
            .ok_or_else(|| bad(source, n, format!("TIMESTAMP {ts:?} is not YYYY-MM-DD HH:MM:SS[.fraction]")))?;
        let token = |v: &str, field: &str| {
            v.trim().parse::<u32>().map_err(|_| bad(source, n, format!("{field} {v:?} is not a whole number")))
        };
        let start = *first.get_or_insert(t);
        if t < start {
            return Err(bad(source, n, "TIMESTAMP goes back before the first request; rows must be sorted by time"));
        }
        out.push(LlmRequest {
            at_s: t - start,
            context_tokens: token(ctx, "ContextTokens")?,
            generated_tokens: token(out_tokens, "GeneratedTokens")?,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct MooncakeRow {
    timestamp: f64,
    input_length: u32,
    output_length: u32,
}

/// Reads a Mooncake trace (one JSON object per line).
pub fn read_mooncake(source: &str, input: impl Read) -> Result<Vec<LlmRequest>, ServeError> {
    let mut out = Vec::new();
    let mut first: Option<f64> = None;
    for (i, line) in BufReader::new(input).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| bad(source, n, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: MooncakeRow = serde_json::from_str(&line).map_err(|e| {
            bad(source, n, format!("{e}; expected {{\"timestamp\": ms, \"input_length\": n, \"output_length\": n}}"))
        })?;
        if !row.timestamp.is_finite() || row.timestamp < 0.0 {
            return Err(bad(source, n, format!("timestamp {} is not a time in ms", row.timestamp)));
        }
        let t = row.timestamp / 1000.0;
        let start = *first.get_or_insert(t);
        if t < start {
            return Err(bad(source, n, "timestamp goes back before the first request; rows must be sorted by time"));
        }
        out.push(LlmRequest { at_s: t - start, context_tokens: row.input_length, generated_tokens: row.output_length });
    }
    Ok(out)
}

/// `YYYY-MM-DD HH:MM:SS[.fraction]` as seconds since 1970-01-01 (UTC, proleptic Gregorian).
fn parse_timestamp(s: &str) -> Option<f64> {
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-');
    let (y, m, day) = (d.next()?.parse::<i64>().ok()?, d.next()?.parse::<u32>().ok()?, d.next()?.parse::<u32>().ok()?);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, min, sec) =
        (t.next()?.parse::<u32>().ok()?, t.next()?.parse::<u32>().ok()?, t.next()?.parse::<u32>().ok()?);
    if t.next().is_some() || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    let frac = if fraction.is_empty() {
        0.0
    } else if fraction.bytes().all(|b| b.is_ascii_digit()) {
        format!("0.{fraction}").parse::<f64>().ok()?
    } else {
        return None;
    };
    let days = days_from_civil(y, m, day);
    Some(days as f64 * 86_400.0 + f64::from(h * 3600 + min * 60 + sec) + frac)
}

/// Days from 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn azure_rows_become_seconds_from_the_first_request() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 23:59:59.5000000,374,44\n\
                    2023-11-17 00:00:01.2500000,396,109\n";
        let r = read_azure("conv.csv", text.as_bytes()).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], LlmRequest { at_s: 0.0, context_tokens: 374, generated_tokens: 44 });
        assert!((r[1].at_s - 1.75).abs() < 1e-6, "{}", r[1].at_s);
    }

    #[test]
    fn azure_errors_name_the_line_and_field() {
        let err = read_azure("c.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,x,1\n".as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.csv:2") && err.contains("ContextTokens"), "{err}");
        let err = read_azure("c.csv", "time,a,b\n".as_bytes()).unwrap_err().to_string();
        assert!(err.contains("c.csv:1") && err.contains("header"), "{err}");
        let err = read_azure("c.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-13-16 18:00:00,1,1\n".as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("TIMESTAMP"), "{err}");
    }

    #[test]
    fn mooncake_rows_are_read_in_milliseconds() {
        let text = "{\"timestamp\": 1000, \"input_length\": 6758, \"output_length\": 500, \"hash_ids\": [0]}\n\
                    {\"timestamp\": 3500, \"input_length\": 10, \"output_length\": 2, \"hash_ids\": []}\n";
        let r = read_mooncake("m.jsonl", text.as_bytes()).unwrap();
        assert_eq!(r[1], LlmRequest { at_s: 2.5, context_tokens: 10, generated_tokens: 2 });
        let err = read_mooncake("m.jsonl", "{\"timestamp\": 1}\n".as_bytes()).unwrap_err().to_string();
        assert!(err.contains("m.jsonl:1") && err.contains("input_length"), "{err}");
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2023, 11, 16), 19_677);
    }
}
