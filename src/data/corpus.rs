//! Reading a corpus as documents, in order: JSON lines (`.jsonl` / `.json`, one object per line, the
//! text under a key), plain text files (one document per file, per blank-line-separated paragraph, or
//! per line), or a directory of `.txt` files (sorted by path, recursive). Any of the files may be
//! gzip-compressed (`.gz`). Errors name the file and line.

use crate::{bail, Context, Error, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Split {
    /// One document per file (text) or per JSON line.
    #[default]
    None,
    /// Text files: one document per blank-line-separated paragraph.
    Paragraphs,
    /// Text files: one document per non-empty line.
    Lines,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The JSON key holding the text (Megatron's `--json-keys`, one key).
    pub json_key: String,
    pub split: Split,
}

impl Default for Options {
    fn default() -> Self {
        Self { json_key: "text".into(), split: Split::None }
    }
}

/// One document's text: a string, or (JSON) a list of sentences tokenized one by one, as Megatron does.
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    One(String),
    Sentences(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub text: Text,
    /// Bytes of input this document came from (for the progress rate).
    pub bytes: usize,
}

/// The input files, in order.
pub fn input_files(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_dir() {
        let mut files = Vec::new();
        collect_txt(input, &mut files)?;
        files.sort();
        if files.is_empty() {
            bail!("{}: the directory holds no .txt files", input.display());
        }
        return Ok(files);
    }
    if !input.exists() {
        bail!("{}: no such file or directory", input.display());
    }
    Ok(vec![input.to_path_buf()])
}

fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_txt(&path, out)?;
        } else if kind(&path) == Some(Kind::Text) {
            out.push(path);
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Text,
}

fn kind(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_string_lossy().to_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".jsonl") || name.ends_with(".json") {
        Some(Kind::Json)
    } else if name.ends_with(".txt") {
        Some(Kind::Text)
    } else {
        None
    }
}

fn open(path: &Path) -> Result<Box<dyn Read>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

/// Calls `each` with batches of up to `batch` documents, in corpus order.
pub fn for_each_batch(
    input: &Path,
    opts: &Options,
    batch: usize,
    mut each: impl FnMut(Vec<Document>) -> Result<()>,
) -> Result<()> {
    let mut pending = Vec::with_capacity(batch);
    let mut push = |doc: Document, pending: &mut Vec<Document>| -> Result<()> {
        pending.push(doc);
        if pending.len() >= batch {
            each(std::mem::take(pending))?;
        }
        Ok(())
    };
    let mut any = false;
    for path in input_files(input)? {
        let Some(k) = kind(&path) else {
            bail!(
                "{}: unknown input type (expected .jsonl, .json or .txt, optionally .gz, or a directory of .txt)",
                path.display()
            );
        };
        let mut reader = BufReader::new(open(&path)?);
        match k {
            Kind::Json => {
                let mut line = Vec::new();
                let mut number = 0;
                loop {
                    line.clear();
                    let n =
                        reader.read_until(b'\n', &mut line).with_context(|| format!("reading {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    number += 1;
                    let doc =
                        json_document(&line, opts).map_err(|e| e.context(format!("{}:{number}", path.display())))?;
                    any = true;
                    push(doc, &mut pending)?;
                }
            }
            Kind::Text => {
                let mut bytes = Vec::new();
                reader.read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
                let text = String::from_utf8(bytes).map_err(|e| {
                    Error::msg(format!(
                        "{}: not valid UTF-8 (at byte {})",
                        path.display(),
                        e.utf8_error().valid_up_to()
                    ))
                })?;
                for part in split_text(&text, opts.split) {
                    any = true;
                    push(Document { bytes: part.len(), text: Text::One(part.to_string()) }, &mut pending)?;
                }
            }
        }
    }
    if !pending.is_empty() {
        each(pending)?;
    }
    if !any {
        bail!("{}: the corpus holds no documents", input.display());
    }
    Ok(())
}

fn json_document(line: &[u8], opts: &Options) -> Result<Document> {
    let text = std::str::from_utf8(line)
        .map_err(|e| Error::msg(format!("not valid UTF-8 (at byte {} of the line)", e.valid_up_to())))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::msg(format!("malformed JSON: {e}")))?;
    let Some(field) = value.get(&opts.json_key) else {
        bail!("no key {:?} in this JSON object (use --json-keys to choose the text field)", opts.json_key);
    };
    let text = match field {
        serde_json::Value::String(s) => Text::One(s.clone()),
        serde_json::Value::Array(items) => Text::Sentences(
            items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        Error::msg(format!("key {:?} holds a list with a non-string item", opts.json_key))
                    })
                })
                .collect::<Result<_>>()?,
        ),
        other => bail!("key {:?} holds {}, not a string", opts.json_key, json_type(other)),
    };
    Ok(Document { text, bytes: line.len() })
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

fn split_text(text: &str, split: Split) -> Vec<&str> {
    match split {
        Split::None => vec![text],
        Split::Lines => text.lines().filter(|l| !l.trim().is_empty()).collect(),
        Split::Paragraphs => {
            let mut out = Vec::new();
            let mut start: Option<usize> = None;
            let mut end = 0;
            let mut offset = 0;
            for line in text.split_inclusive('\n') {
                if line.trim().is_empty() {
                    if let Some(s) = start.take() {
                        out.push(&text[s..end]);
                    }
                } else {
                    start.get_or_insert(offset);
                    end = offset + line.trim_end_matches(['\n', '\r']).len();
                }
                offset += line.len();
            }
            if let Some(s) = start {
                out.push(&text[s..end]);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_and_lines() {
        let t = "a b\nc\n\n\n  \nd\r\n\ne\n";
        assert_eq!(split_text(t, Split::Paragraphs), vec!["a b\nc", "d", "e"]);
        assert_eq!(split_text(t, Split::Lines), vec!["a b", "c", "d", "e"]);
        assert_eq!(split_text(t, Split::None), vec![t]);
    }
}
