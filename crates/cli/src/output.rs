//! Output formats: aligned text tables for people, one JSON value per line for programs, and
//! the small encoders both need (UTC times, base64 for bytes that are not UTF-8).

use std::io::Write;

use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for programs: one object per result, or one line per record for streams.
    Json,
}

/// A text table: a header row and left-aligned columns two spaces apart.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column titles.
    pub fn new(header: Vec<&'static str>) -> Table {
        Table { header, rows: Vec::new() }
    }

    /// Appends a row; missing trailing cells print empty.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, without trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(i) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let mut text = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.chars().count())));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Writes `text` to stdout.
pub fn print_text(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Writes `value` as one line of JSON to stdout.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    print_text(&line)
}

/// One JSON object built field by field, keeping the fields in the order they are added
/// (serde_json's map sorts them unless a crate in the build enables `preserve_order`).
#[derive(Debug)]
pub struct JsonLine {
    text: String,
}

impl JsonLine {
    /// An empty object.
    pub fn new() -> JsonLine {
        JsonLine { text: String::from("{") }
    }

    /// Adds a field holding any JSON value.
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> JsonLine {
        self.name(name);
        self.text.push_str(&value.into().to_string());
        self
    }

    /// Adds bytes: as a string under `name` when they are UTF-8, else as standard base64
    /// under `{name}_base64`; `null` under `name` when absent.
    pub fn bytes(self, name: &str, bytes: Option<&[u8]>) -> JsonLine {
        match bytes.map(std::str::from_utf8) {
            None => self.field(name, Value::Null),
            Some(Ok(text)) => self.field(name, text),
            Some(Err(_)) => {
                let encoded = base64(bytes.unwrap_or_default());
                self.field(&format!("{name}_base64"), encoded)
            }
        }
    }

    /// Adds a field whose value is already JSON text.
    pub fn raw(mut self, name: &str, json: &str) -> JsonLine {
        self.name(name);
        self.text.push_str(json);
        self
    }

    /// The object as JSON text.
    pub fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }

    fn name(&mut self, name: &str) {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        self.text.push_str(&Value::from(name).to_string());
        self.text.push(':');
    }
}

/// Standard base64 (RFC 4648, with padding). Small enough to keep a dependency out.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                text.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days: the proleptic Gregorian date of a day count.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", of_day / 3600, (of_day / 60) % 60, of_day % 60)
}

/// Parses a UTC time as [`utc`] prints it (`YYYY-MM-DD HH:MM:SS UTC`), or RFC 3339 in UTC
/// (`YYYY-MM-DDTHH:MM:SS[.fff]Z`), into milliseconds since the Unix epoch.
pub fn parse_utc(text: &str) -> Option<i64> {
    let text = text.trim();
    let text = text.strip_suffix(" UTC").or_else(|| text.strip_suffix('Z')).unwrap_or(text);
    let (date, time) = text.split_once(['T', ' '])?;
    let mut date_parts = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date_parts.next()??, date_parts.next()??, date_parts.next()??);
    let (time, millis) = match time.split_once('.') {
        Some((time, fraction))
            if !fraction.is_empty() && fraction.len() <= 9 && fraction.bytes().all(|b| b.is_ascii_digit()) =>
        {
            let padded = format!("{fraction:0<3}");
            (time, padded[..3].parse::<i64>().ok()?)
        }
        Some(_) => return None,
        None => (time, 0),
    };
    let mut time_parts = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (time_parts.next()??, time_parts.next()??, time_parts.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Howard Hinnant's days-from-civil, the inverse of the conversion in `utc`.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

/// A count with thousands separators: 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut text = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(c);
    }
    text
}

/// A byte count for people: "512 B", "3.0 MiB".
pub fn bytes_human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// "yes" or "no".
pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn json_lines_keep_field_order_and_base64_binary_bytes() {
        let line = JsonLine::new()
            .field("partition", 1)
            .bytes("key", None)
            .bytes("value", Some("h\u{e9}llo \"q\"".as_bytes()))
            .bytes("raw", Some(&[0xff, 0x00]))
            .raw("headers", "[]")
            .finish();
        assert_eq!(line, r#"{"partition":1,"key":null,"value":"héllo \"q\"","raw_base64":"/wA=","headers":[]}"#);
        let parsed: Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(parsed["value"], "h\u{e9}llo \"q\"");
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(vec!["ID", "ADDRESS", "LIVE"]);
        table.row(vec!["1".into(), "127.0.0.1:7101".into(), "yes".into()]);
        table.row(vec!["22".into(), "h:1".into()]);
        assert_eq!(table.render(), "ID  ADDRESS         LIVE\n1   127.0.0.1:7101  yes\n22  h:1\n");
    }

    #[test]
    fn utc_times_and_thousands() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_827_696_000), "2000-02-29 12:34:56 UTC");
        assert_eq!(utc(1_767_225_599_999), "2025-12-31 23:59:59 UTC");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn utc_times_parse_back() {
        for ms in [0, 951_827_696_000, 1_767_225_599_000, 1_795_000_000_000] {
            assert_eq!(parse_utc(&utc(ms)), Some(ms), "{}", utc(ms));
        }
        assert_eq!(parse_utc("2000-02-29T12:34:56.789Z"), Some(951_827_696_789));
        assert_eq!(parse_utc("2000-02-29T12:34:56.5Z"), Some(951_827_696_500));
        assert_eq!(parse_utc("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_utc("yesterday"), None);
    }
}
