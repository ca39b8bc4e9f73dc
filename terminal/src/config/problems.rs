//! The TOML parser's refusals of a configuration file, reworded to name the line, the table and
//! the key, as the terminal's other configuration errors do.

use std::collections::BTreeMap;

/// A TOML parser error in the words of the validated errors: (line, key, problem), the key
/// with its table (`sensor[1].address`, `hj212.logger[0].mn`), instead of the parser's
/// multi-line dump with its list of every field.
pub fn toml_problem(text: &str, e: &toml::de::Error) -> (Option<usize>, String, String) {
    let message = e.message().trim();
    let at = e.span().map(|s| s.start.min(text.len()));
    let line = at.map(|a| text[..a].matches('\n').count() + 1);
    // The table the error is in: the last header at or above its line, with its index for
    // an array of tables.
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut key_on_line = None;
    for (i, raw_line) in text.lines().enumerate() {
        if line.is_none_or(|l| i + 1 > l) {
            break;
        }
        let l = raw_line.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
        }
        if line == Some(i + 1) {
            key_on_line = l
                .split_once('=')
                .map(|(k, _)| k.trim().to_owned())
                .filter(|k| !k.is_empty() && !k.starts_with('['));
        }
    }
    let in_table = |k: &str| {
        if table.is_empty() {
            k.to_owned()
        } else {
            format!("{table}.{k}")
        }
    };
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|r| r.split('`').next())
            .map(str::to_owned)
    };
    if let Some(k) = quoted("unknown field `") {
        let known = message
            .split_once("expected ")
            .map(|(_, rest)| {
                let rest = rest.trim_start_matches("one of ").replace('`', "");
                format!(" (known here: {rest})")
            })
            .unwrap_or_default();
        return (line, in_table(&k), format!("unknown key{known}"));
    }
    if let Some(k) = quoted("missing field `") {
        // A key missing from the top level has no line; one missing from a table, the table's.
        let line = line.filter(|_| !table.is_empty());
        return (line, in_table(&k), "missing (it is required)".to_owned());
    }
    let key = match &key_on_line {
        Some(k) => in_table(k),
        None if table.is_empty() => "(file)".to_owned(),
        None => table.clone(),
    };
    let problem = match message.strip_prefix("invalid type: ") {
        Some(rest) => match rest.split_once(", expected ") {
            Some((found, expected)) => format!("wrong type: expected {expected}, found {found}"),
            None => format!("wrong type: {rest}"),
        },
        None => message.lines().last().unwrap_or(message).to_owned(),
    };
    (line, key, problem)
}
