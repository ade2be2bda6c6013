//! Output. With `--json` a command prints its value as one JSON document; plain
//! output is rendered here from the same value: a created record's UUID alone,
//! a digest alone, lists as aligned columns, and nothing for commands that only
//! change something.

use concord::hlc::Clock;
use serde_json::Value;

/// The text to print on stdout (empty: print nothing).
pub fn output(command: &str, value: &Value, json: bool) -> String {
    if json {
        return value.to_string();
    }
    plain(command, value)
}

fn plain(command: &str, v: &Value) -> String {
    match command {
        "device" => table(
            &[],
            vec![
                vec!["id".into(), text(&v["device_id"])],
                vec!["node id".into(), text(&v["node_id"])],
                vec!["name".into(), text(&v["name"])],
            ],
        ),
        "library create" | "tag create" | "album create" | "location add" | "conduit create" => {
            text(&v["id"])
        }
        "conduit list" => list(
            v,
            &["ID", "POLICY", "FROM", "TO", "STATE", "REASON"],
            &["id", "policy", "from", "to", "state", "reason"],
        ),
        "conduit status" => conduit_status(v),
        "library digest" => text(&v["digest"]),
        "library export" => serde_json::to_string_pretty(v).unwrap_or_default(),
        "library list" => list(v, &["ID", "NAME", "DEVICES"], &["id", "name", "devices"]),
        "tag list" => list(v, &["ID", "NAME", "COLOR"], &["id", "name", "color"]),
        "album list" => list(v, &["ID", "NAME", "ENTRIES"], &["id", "name", "entries"]),
        "location list" => list(
            v,
            &["ID", "DEVICE", "ENTRIES", "PATH"],
            &["id", "device_id", "entries", "path"],
        ),
        "entry list" => list(
            v,
            &["ID", "KIND", "SIZE", "PATH", "TAGS"],
            &["id", "kind", "size", "path", "tags"],
        ),
        "pair invite" => text(&v["ticket"]),
        "pair join" => text(&v["device_id"]),
        "device list" => list(
            &readable(v),
            &["ID", "NAME", "ONLINE", "PATH", "RTT", "LAST SEEN"],
            &["device_id", "name", "online", "path", "rtt_ms", "last_seen"],
        ),
        "library remote" => list(
            v,
            &["ID", "NAME", "DEVICES", "ENTRIES"],
            &["id", "name", "devices", "entries"],
        ),
        "sync status" => sync_status(v),
        "entry fetch" => format!(
            "{} bytes in {} files to {}",
            text(&v["bytes"]),
            text(&v["files"]),
            text(&v["path"])
        ),
        "location pull" => format!(
            "{} entries from {} locations",
            text(&v["entries"]),
            text(&v["locations"])
        ),
        "sync conflicts" => list(
            v,
            &["RECORD", "FIELD", "KEPT", "DISCARDED", "AT"],
            &["record", "field", "kept", "discarded", "at"],
        ),
        _ => String::new(),
    }
}

/// `conduit status` for people: state, reason, and a progress bar while
/// bytes are being moved.
fn conduit_status(v: &Value) -> String {
    let (done, total) = (
        v["bytes_done"].as_u64().unwrap_or(0),
        v["bytes_total"].as_u64().unwrap_or(0),
    );
    let filled = (done.saturating_mul(30)).checked_div(total).unwrap_or(0) as usize;
    let bar = format!(
        "[{}{}]",
        "#".repeat(filled.min(30)),
        ".".repeat(30 - filled.min(30))
    );
    let mut rows = vec![
        vec!["id".into(), text(&v["id"])],
        vec!["policy".into(), text(&v["policy"])],
        vec!["state".into(), text(&v["state"])],
        vec!["reason".into(), text(&v["reason"])],
        vec![
            "files".into(),
            format!("{}/{}", text(&v["files_done"]), text(&v["files_total"])),
        ],
        vec!["bytes".into(), format!("{done}/{total} {bar}")],
        vec!["last error".into(), text(&v["last_error"])],
    ];
    if let Some(c) = v["conflicts"].as_array().filter(|c| !c.is_empty()) {
        rows.push(vec!["conflicts".into(), c.len().to_string()]);
    }
    // Offload, on its source's device.
    if let (Some(free), Some(min)) = (v["free_bytes"].as_u64(), v["min_free_bytes"].as_u64()) {
        rows.push(vec!["free".into(), format!("{free} (keeps {min})")]);
    }
    if let Some(w) = v["waiting"].as_str() {
        rows.push(vec!["waiting".into(), w.to_string()]);
    }
    for l in v["lost"].as_array().into_iter().flatten() {
        rows.push(vec!["lost content".into(), text(&l["why"])]);
    }
    table(&[], rows)
}

fn sync_status(v: &Value) -> String {
    let mut out = table(
        &[],
        vec![
            vec!["leader".into(), text(&v["leader"])],
            vec!["epoch".into(), text(&v["epoch"])],
            vec!["role".into(), text(&v["role"])],
            vec!["seq".into(), text(&v["seq"])],
            vec!["conflicts".into(), text(&v["conflicts"])],
        ],
    );
    let peers = list(
        &readable(&v["peers"]),
        &["PEER", "NAME", "ONLINE", "PATH", "RTT", "LAG", "LAST SEEN"],
        &[
            "device_id",
            "name",
            "online",
            "path",
            "rtt_ms",
            "lag_entries",
            "last_seen",
        ],
    );
    if !peers.is_empty() {
        out.push_str("\n\n");
        out.push_str(&peers);
    }
    let jobs = list(
        &v["jobs"],
        &["INDEXED BY", "PATH", "STATE", "DONE", "TOTAL", "PER SECOND"],
        &["origin", "path", "state", "done", "total", "rate"],
    );
    if !jobs.is_empty() {
        out.push_str("\n\n");
        out.push_str(&jobs);
    }
    for p in v["peers"].as_array().into_iter().flatten() {
        let forged = p["forged"].as_u64().unwrap_or(0);
        if forged > 0 {
            let who = p["name"]
                .as_str()
                .or(p["device_id"].as_str())
                .unwrap_or("?");
            out.push_str(&format!(
                "\n\nwarning: refused {forged} entries from {} not signed by their origin: {}",
                escape(who),
                escape(p["last_refusal"].as_str().unwrap_or(""))
            ));
        }
    }
    if let Some(warning) = v["clock_warning"].as_str() {
        out.push_str("\n\nwarning: ");
        out.push_str(&escape(warning));
    }
    if let Some(n) = v["stats"]["rolled_back"].as_u64().filter(|n| *n > 0) {
        out.push_str(&format!(
            "\n\nwarning: rollback detected: peers held {n} changes this device had made and \
             lost (data dir restored from a backup, rolled back, or cut by a power loss); \
             they were taken back from them"
        ));
    }
    if let Some(n) = v["stats"]["position_conflicts"].as_u64().filter(|n| *n > 0) {
        out.push_str(&format!(
            "

warning: {n} received chunks held other changes under positions this device              already held (both were applied): {}",
            escape(v["stats"]["last_position_conflict"].as_str().unwrap_or(""))
        ));
    }
    out
}

/// Peer lines as people read them: `last_seen` (ms since the epoch) as
/// "12 s ago", `rtt_ms` as "0.42 ms".
fn readable(v: &Value) -> Value {
    let now = concord::hlc::SystemClock.now_ms();
    let Some(items) = v.as_array() else {
        return v.clone();
    };
    let items = items
        .iter()
        .map(|item| {
            let mut item = item.clone();
            if let Some(t) = item["last_seen"].as_u64() {
                item["last_seen"] = Value::String(ago(now.saturating_sub(t)));
            }
            if let Some(ms) = item["rtt_ms"].as_f64() {
                item["rtt_ms"] = Value::String(format!("{ms:.2} ms"));
            }
            item
        })
        .collect();
    Value::Array(items)
}

/// A duration in the past, rounded to a unit people read: "12 s ago",
/// "5 min ago", "3 h ago", "2 d ago".
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..120 => format!("{s} s ago"),
        120..7_200 => format!("{} min ago", s / 60),
        7_200..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A JSON value as a table cell: strings bare (control characters escaped),
/// null as `-`, arrays joined by `,`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => escape(s),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn list(v: &Value, header: &[&str], keys: &[&str]) -> String {
    let Some(items) = v.as_array() else {
        return String::new();
    };
    if items.is_empty() {
        return String::new();
    }
    let rows = items
        .iter()
        .map(|item| keys.iter().map(|k| text(&item[*k])).collect())
        .collect();
    table(header, rows)
}

/// Columns separated by two spaces, padded to the widest cell; the last column
/// is not padded. An empty header prints no header line.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut all: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 1);
    if !header.is_empty() {
        all.push(header.iter().map(|h| h.to_string()).collect());
    }
    all.extend(rows);
    let cols = all.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            all.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(
                    ' ',
                    widths[c] - cell.chars().count() + 2,
                ));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.truncate(out.trim_end_matches('\n').len());
    out
}

/// `s` safe for a terminal: control characters (C0, DEL, C1) and bidi
/// overrides written as `\u{..}`. Names and paths come from peers and from
/// file names; an escape sequence in one must not drive the user's terminal.
pub fn escape(s: &str) -> String {
    if !s.chars().any(needs_escape) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_ids_and_tables() {
        assert_eq!(output("tag create", &json!({"id": "abc"}), false), "abc");
        assert_eq!(
            output("tag create", &json!({"id": "abc"}), true),
            r#"{"id":"abc"}"#
        );
        let tags = json!([
            {"id": "1", "name": "holiday", "color": null},
            {"id": "22", "name": "x", "color": "#ff0000"},
        ]);
        assert_eq!(
            output("tag list", &tags, false),
            "ID  NAME     COLOR\n1   holiday  -\n22  x        #ff0000"
        );
        assert_eq!(output("tag list", &json!([]), false), "");
        assert_eq!(output("tag rename", &json!({"id": "1"}), false), "");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain é"), "plain é");
        assert_eq!(
            escape("a\u{1b}[31mb\u{7}\u{9b}c\u{202e}d\n"),
            "a\\u{1b}[31mb\\u{7}\\u{9b}c\\u{202e}d\\u{a}"
        );
        let tags = json!([{"id": "1", "name": "x\u{1b}]0;t\u{7}", "color": null}]);
        assert!(!output("tag list", &tags, false).contains('\u{1b}'));
    }

    #[test]
    fn last_seen_reads_as_time_ago() {
        assert_eq!(ago(12_400), "12 s ago");
        assert_eq!(ago(300_000), "5 min ago");
        assert_eq!(ago(3 * 3_600_000), "3 h ago");
        assert_eq!(ago(3 * 86_400_000), "3 d ago");
    }
}
