//! What the CLI prints: tables for people, JSON for scripts, spinners while it waits.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

pub use crate::local_io::out;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned tables.
    Table,
    /// JSON: one document per result; one object per line for streams.
    Json,
}

/// Rows with named columns: printed as a table, or as a JSON array of objects.
#[derive(Debug)]
pub struct Rows {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Value>>,
}

impl Rows {
    /// A result with these columns.
    pub fn new(columns: &[&'static str]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row, one value per column.
    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// Prints every row; `empty` (to stderr) when there is none, in table form.
    pub fn print(&self, format: Format, empty: &str) {
        match format {
            Format::Json => {
                let list: Vec<Value> = self.rows.iter().map(|r| self.object(r)).collect();
                out(Value::Array(list));
            }
            Format::Table if self.rows.is_empty() => eprintln!("{empty}"),
            Format::Table => {
                let mut table = comfy_table::Table::new();
                table
                    .load_preset(comfy_table::presets::NOTHING)
                    .set_header(self.columns.iter().map(|c| c.to_uppercase()));
                for row in &self.rows {
                    table.add_row(row.iter().map(cell));
                }
                for column in table.column_iter_mut() {
                    column.set_padding((0, 2));
                }
                out(table.trim_fmt());
            }
        }
    }

    fn object(&self, row: &[Value]) -> Value {
        let map: Map<String, Value> = self
            .columns
            .iter()
            .zip(row)
            .map(|(c, v)| ((*c).to_owned(), v.clone()))
            .collect();
        Value::Object(map)
    }
}

fn json_object(fields: &[(&str, Value)]) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

/// One object: printed as `field  value` lines, or as a JSON object.
pub fn print_object(format: Format, fields: &[(&str, Value)]) {
    match format {
        Format::Json => {
            out(json_object(fields));
        }
        Format::Table => {
            let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (key, value) in fields {
                out(format_args!("{key:<width$}  {}", cell(value)));
            }
        }
    }
}

/// A streamed record: one line of text, or one JSON object per line. False when standard output
/// is gone.
pub fn print_line(format: Format, text: &str, fields: &[(&str, Value)]) -> bool {
    match format {
        Format::Json => out(json_object(fields)),
        Format::Table => out(text),
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        // Readable in a table: three decimals at most (JSON keeps every digit).
        Value::Number(n) if n.is_f64() => {
            let text = format!("{:.3}", n.as_f64().unwrap_or_default());
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        }
        other => other.to_string(),
    }
}

/// A timestamp as RFC 3339 (UTC, seconds).
pub fn time(ts: Option<&prost_types::Timestamp>) -> Value {
    match ts.and_then(|t| SystemTime::try_from(*t).ok()) {
        Some(t) => Value::String(humantime::format_rfc3339_seconds(t).to_string()),
        None => Value::Null,
    }
}

/// How long ago `ts` was, for people ("12s ago").
pub fn ago(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = ts.and_then(|t| SystemTime::try_from(*t).ok()) else {
        return "never".into();
    };
    match SystemTime::now().duration_since(t) {
        Ok(d) => format!("{} ago", short(d)),
        Err(_) => "just now".into(),
    }
}

/// A duration, rounded to its largest unit or two ("3m 20s").
pub fn short(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// A metric value as JSON.
pub fn metric_value(metric: &sipmba_proto::v1::Metric) -> Value {
    use sipmba_proto::v1::metric::Value as V;
    match &metric.value {
        Some(V::Number(n)) => serde_json::json!(n),
        Some(V::Flag(b)) => Value::Bool(*b),
        Some(V::Text(t)) => Value::String(t.clone()),
        None => Value::Null,
    }
}

/// A metric value with its unit, for people.
pub fn metric_text(metric: &sipmba_proto::v1::Metric) -> String {
    let value = cell(&metric_value(metric));
    if metric.unit.is_empty() {
        value
    } else {
        format!("{value} {}", metric.unit)
    }
}

/// A spinner on stderr while a future runs (only on a terminal; hidden otherwise).
pub struct Spinner(indicatif::ProgressBar);

impl Spinner {
    /// Starts spinning with `message`.
    pub fn start(message: impl Into<String>) -> Self {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(100));
        Self(bar)
    }

    /// Prints a line on standard error above the spinner.
    pub fn note(&self, line: &str) {
        self.0.suspend(|| eprintln!("{line}"));
    }

    /// Changes the message.
    pub fn set(&self, message: impl Into<String>) {
        self.0.set_message(message.into());
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
