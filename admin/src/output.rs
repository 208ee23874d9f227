//! What a command prints: a [`Report`] holds both forms, and `main` picks one (`--json`).
//!
//! Tables are plain text: columns padded to their widest cell, two spaces apart, no
//! trailing spaces; key/value blocks are a two-column table without a header.

use std::fmt;

/// A command's result: the human text, the JSON document, and whether it succeeded
/// (exit code 0) or not (1: unknown payment, a failed check).
#[derive(Debug, Clone)]
pub struct Report {
    pub ok: bool,
    pub text: String,
    pub json: serde_json::Value,
}

impl Report {
    /// The text to print for the chosen format, ending in a newline.
    pub fn render(&self, json: bool) -> String {
        if json {
            let mut s = serde_json::to_string_pretty(&self.json)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            s.push('\n');
            s
        } else if self.text.ends_with('\n') {
            self.text.clone()
        } else {
            format!("{}\n", self.text)
        }
    }
}

/// Rows under an optional header.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn with_header<I, S>(header: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            header: Some(header.into_iter().map(Into::into).collect()),
            rows: Vec::new(),
        }
    }

    /// A key/value block: `key  value` per line, keys aligned.
    pub fn key_values<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Self {
        Self {
            header: None,
            rows: pairs
                .into_iter()
                .map(|(k, v)| vec![k.to_owned(), v])
                .collect(),
        }
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<&Vec<String>> = self.header.iter().chain(self.rows.iter()).collect();
        let cols = all.iter().map(|r| r.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                all.iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in all {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[c].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// `value`, or `-` for none.
pub fn or_dash<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_and_lines_trimmed() {
        let mut t = Table::with_header(["ID", "AMOUNT", "PHONE"]);
        t.row(["ws_CO_1", "10", "2547******33"]);
        t.row(["ws_CO_12345", "1500", ""]);
        assert_eq!(
            t.to_string(),
            "ID           AMOUNT  PHONE\n\
             ws_CO_1      10      2547******33\n\
             ws_CO_12345  1500\n"
        );
    }

    #[test]
    fn key_values_align() {
        let t = Table::key_values([("status", "PENDING".into()), ("amount", or_dash(Some(5)))]);
        assert_eq!(t.to_string(), "status  PENDING\namount  5\n");
        assert_eq!(or_dash::<u32>(None), "-");
    }

    #[test]
    fn a_report_renders_either_form() {
        let r = Report {
            ok: true,
            text: "hello".into(),
            json: serde_json::json!({"a": 1}),
        };
        assert_eq!(r.render(false), "hello\n");
        let j: serde_json::Value = serde_json::from_str(&r.render(true)).unwrap();
        assert_eq!(j["a"], 1);
    }
}
