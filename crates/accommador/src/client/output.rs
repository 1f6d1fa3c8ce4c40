//! What the resource CLI prints: tables for people, the server's own JSON for scripts (`--json`),
//! and progress bars that appear only when stderr is a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// One table column: its heading and the JSON pointer of its value in each row.
pub type Column = (&'static str, &'static str);

/// A cell: strings as they are, `null` as `-`, lists joined by commas, anything else as JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    t
}

/// Rows under headings; `(none)` for an empty list.
pub fn print_rows(columns: &[Column], rows: &[Value]) {
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let mut t = table();
    t.set_header(columns.iter().map(|(h, _)| Cell::new(h)));
    for row in rows {
        t.add_row(
            columns
                .iter()
                .map(|(_, ptr)| cell(row.pointer(ptr).unwrap_or(&Value::Null))),
        );
    }
    println!("{}", trim_lines(&t.to_string()));
}

/// One object as `field  value` lines, in the server's order.
pub fn print_object(object: &Value) {
    let Some(fields) = object.as_object() else {
        println!("{}", cell(object));
        return;
    };
    let mut t = table();
    for (name, value) in fields {
        t.add_row(vec![name.clone(), cell(value)]);
    }
    println!("{}", trim_lines(&t.to_string()));
}

/// comfy-table pads the last column; trailing blanks only make copying harder.
fn trim_lines(s: &str) -> String {
    s.lines()
        .map(|l| l.trim_end().trim_start_matches(' '))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The heading of [`event_line`]s.
pub const EVENT_HEADER: &str =
    "ID                             TYPE               TIMESTAMP                SUBJECT";

/// One event on one line, for `events tail`: its ID, type, time and what it is about (the user
/// and version, the endpoint, or the delivery).
pub fn event_line(raw: &str) -> anyhow::Result<String> {
    let e: Value = serde_json::from_str(raw)?;
    let data = &e["data"];
    let subject = if let Some(user) = data.get("user") {
        if user["erased"] == Value::Bool(true) {
            format!("{} (erased)", cell(&user["id"]))
        } else {
            format!("{} v{}", cell(&user["id"]), cell(&user["version"]))
        }
    } else if let Some(ep) = data.get("endpoint") {
        cell(&ep["id"])
    } else if let Some(d) = data.get("delivery") {
        format!("{} (event {})", cell(&d["id"]), cell(&d["event_id"]))
    } else {
        data.to_string()
    };
    Ok(format!(
        "{:<30} {:<18} {:<24} {subject}",
        cell(&e["id"]),
        cell(&e["type"]),
        cell(&e["timestamp"])
    ))
}

/// A spinner on stderr while something runs, when stderr is a terminal; hidden otherwise, so
/// piped output and logs stay clean.
pub fn spinner(message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(message.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {pos} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    // Drawn now, not at the ticker thread's first turn: a quick request still shows it.
    bar.tick();
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_names_what_the_event_is_about() {
        let line = |raw: &str| event_line(raw).unwrap();
        let user = r#"{"id":"evt_1","type":"user.updated","timestamp":"2026-11-27T01:02:03.456Z","data":{"user":{"id":"usr_1","version":3}}}"#;
        assert!(line(user).ends_with("usr_1 v3"), "{}", line(user));
        assert!(line(user).starts_with("evt_1 "), "{}", line(user));
        let erased = r#"{"id":"evt_2","type":"user.deleted","timestamp":"t","data":{"user":{"id":"usr_1","erased":true}}}"#;
        assert!(line(erased).ends_with("usr_1 (erased)"), "{}", line(erased));
        let endpoint = r#"{"id":"evt_3","type":"endpoint.disabled","timestamp":"t","data":{"endpoint":{"id":"ep_1"}}}"#;
        assert!(line(endpoint).ends_with(" ep_1"), "{}", line(endpoint));
        let failed = r#"{"id":"evt_4","type":"delivery.failed","timestamp":"t","data":{"delivery":{"id":"dlv_1","event_id":"evt_0"}}}"#;
        assert!(
            line(failed).ends_with("dlv_1 (event evt_0)"),
            "{}",
            line(failed)
        );
    }

    #[test]
    fn cells_show_nulls_lists_and_numbers_plainly() {
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&serde_json::json!(["a", "b"])), "a,b");
        assert_eq!(cell(&serde_json::json!(200)), "200");
        assert_eq!(cell(&serde_json::json!({"k": 1})), r#"{"k":1}"#);
    }
}
